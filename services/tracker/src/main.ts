#!/usr/bin/env node
/** The tracker process: configuration, the app, signals. Everything else is in app.ts. */
import { runService } from '@shoal/runtime';

import { buildApp, loadTrackerConfig } from './app.js';

await runService({ service: 'tracker', loadConfig: loadTrackerConfig, buildApp });
