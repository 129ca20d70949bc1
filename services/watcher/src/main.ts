#!/usr/bin/env node
/** The watcher process: configuration, the app, signals. Everything else is in app.ts. */
import { createLogger, exitOnStartupError, runUntilSignal } from '@shoal/runtime';

import { buildApp, loadWatcherConfig } from './app.js';

try {
  const config = loadWatcherConfig(process.env);
  const logger = createLogger({ service: 'watcher', level: config.SHOAL_LOG_LEVEL });
  const app = await buildApp(config, { logger });
  await runUntilSignal(app, { logger, shutdownTimeoutMs: config.SHOAL_SHUTDOWN_TIMEOUT_MS }).catch(
    (error: unknown) => exitOnStartupError(error, logger),
  );
} catch (error) {
  exitOnStartupError(error);
}
