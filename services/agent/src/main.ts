#!/usr/bin/env node
/** The agent process: configuration, the app, signals. Everything else is in app.ts. */
import { runService } from '@shoal/runtime';

import { buildApp, loadAgentConfig } from './app.js';

await runService({ service: 'agent', loadConfig: loadAgentConfig, buildApp });
