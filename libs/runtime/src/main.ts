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
  // Until the app runs (configuration, tracing, connecting to NATS), a signal ends the
  // process at once: as a container's process 1, node would ignore it (the kernel gives
  // process 1 no default action), and the pod would wait out its grace period.
  const stopStarting = (signal: NodeJS.Signals): void => {
    process.stderr.write(`${signal} while starting: exiting\n`);
    process.exit(0);
  };
  process.on('SIGTERM', stopStarting);
  process.on('SIGINT', stopStarting);
  try {
    const config = entry.loadConfig(process.env);
    // Tracing first, so every span is exported; flushed by runUntilSignal after the app closed.
    const telemetry = await startTelemetry(entry.service, process.env);
    const logger = createLogger({ service: entry.service, level: config.SHOAL_LOG_LEVEL });
    const app = await entry.buildApp(config, { logger });
    // From here a signal closes the app (runUntilSignal's handlers).
    process.off('SIGTERM', stopStarting);
    process.off('SIGINT', stopStarting);
    await runUntilSignal(app, {
      logger,
      telemetry,
      shutdownTimeoutMs: config.SHOAL_SHUTDOWN_TIMEOUT_MS,
    }).catch((error: unknown) => exitOnStartupError(error, logger));
  } catch (error) {
    exitOnStartupError(error);
  }
}
