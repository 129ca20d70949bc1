/**
 * A service's `main.ts` in one call: configuration, tracing, logger, the app, signals. Each
 * service's own wiring stays in its `buildApp`, which tests call directly.
 */
import { exitOnStartupError, runUntilSignal, type Service } from './lifecycle.js';
import { createLogger, type Logger, type LoggerSettings } from './logger.js';
import { startTelemetry } from './telemetry.js';

/** What every service's configuration has. */
export interface ServiceConfigBase {
  readonly SHOAL_LOG_LEVEL: LoggerSettings['level'];
  readonly SHOAL_SHUTDOWN_TIMEOUT_MS: number;
}

export interface ServiceEntry<C extends ServiceConfigBase> {
  /** The service's name: its logs' `service`, its default `service.name` in traces. */
  readonly service: string;
  /** Reads the configuration from the environment; throws a ConfigError naming every problem. */
  readonly loadConfig: (env: Record<string, string | undefined>) => C;
  readonly buildApp: (config: C, overrides: { logger: Logger }) => Promise<Service>;
}

/** Runs a service until a signal; a start-up failure is reported and exits 1. */
export async function runService<C extends ServiceConfigBase>(
  entry: ServiceEntry<C>,
): Promise<void> {
  try {
    const config = entry.loadConfig(process.env);
    // Tracing first, so every span is exported; flushed by runUntilSignal after the app closed.
    const telemetry = await startTelemetry(entry.service, process.env);
    const logger = createLogger({ service: entry.service, level: config.SHOAL_LOG_LEVEL });
    const app = await entry.buildApp(config, { logger });
    await runUntilSignal(app, {
      logger,
      telemetry,
      shutdownTimeoutMs: config.SHOAL_SHUTDOWN_TIMEOUT_MS,
    }).catch((error: unknown) => exitOnStartupError(error, logger));
  } catch (error) {
    exitOnStartupError(error);
  }
}
