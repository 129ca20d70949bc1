#!/usr/bin/env node
/** The watcher process: configuration, the app, signals. Everything else is in app.ts. */
import { createLogger, exitOnStartupError, runUntilSignal, startTelemetry } from '@shoal/runtime';

import { buildApp, loadWatcherConfig } from './app.js';

try {
  const config = loadWatcherConfig(process.env);
  // Tracing first, so every span is exported; flushed by runUntilSignal after the app closed.
  const telemetry = await startTelemetry('watcher', process.env);
  const logger = createLogger({ service: 'watcher', level: config.SHOAL_LOG_LEVEL });
  const app = await buildApp(config, { logger });
  await runUntilSignal(app, {
    logger,
    telemetry,
    shutdownTimeoutMs: config.SHOAL_SHUTDOWN_TIMEOUT_MS,
  }).catch((error: unknown) => exitOnStartupError(error, logger));
} catch (error) {
  exitOnStartupError(error);
}
