#!/usr/bin/env node
/** The watcher process: configuration, the app, signals. Everything else is in app.ts. */
import { runService } from '@shoal/runtime';

import { buildApp, loadWatcherConfig } from './app.js';

await runService({ service: 'watcher', loadConfig: loadWatcherConfig, buildApp });
