#!/usr/bin/env node
/** The seed server process: configuration, the app, signals. Everything else is in app.ts. */
import { runService } from '@shoal/runtime';

import { buildApp, loadSeedConfig } from './app.js';

await runService({ service: 'seedserver', loadConfig: loadSeedConfig, buildApp });
