#!/usr/bin/env -S node --max-semi-space-size=2
/**
 * The agent process: configuration, the app, signals. Everything else is in app.ts.
 *
 * The flags on the first line are the agent's memory settings, and every place that starts the
 * agent passes the same ones (the image's default command, the DaemonSet, compose; the test
 * kit reads them from here): `--max-semi-space-size=2` caps V8's young generation at 2 MiB
 * per semi-space instead of 16. A busy agent otherwise grows it to its largest, 32 MiB
 * resident for objects that live a few milliseconds, about a quarter of its memory; the
 * agent's per-byte work allocates little on V8's heap (piece and body buffers are external
 * and pooled), so the smaller nursery costs no measurable CPU (bench/README.md, "Agent memory").
 */
import { runService } from '@shoal/runtime';

import { buildApp, loadAgentConfig } from './app.js';

await runService({ service: 'agent', loadConfig: loadAgentConfig, buildApp });
