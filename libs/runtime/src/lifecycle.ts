/**
 * Process lifecycle: run a service until SIGTERM/SIGINT, then close it within a deadline.
 * `main.ts` of each service is this and nothing else, so the wiring stays testable.
 */
import type { Logger } from 'pino';

import { ConfigError } from './config.js';

export interface Service {
  start(): Promise<void>;
  /** Stops accepting work, drains what is in flight, releases everything. Idempotent. */
  close(): Promise<void>;
}

export interface RunOptions {
  readonly logger: Logger;
  /** How long a graceful close may take before the process exits anyway, in ms. */
  readonly shutdownTimeoutMs: number;
  /** Flushed last, after the service has closed (or failed to), so its final spans are sent. */
  readonly telemetry?: { shutdown(): Promise<void> };
}

/** Starts `service`, closes it on the first signal, exits 0 on a clean close, 1 otherwise. */
export async function runUntilSignal(service: Service, options: RunOptions): Promise<void> {
  const { logger } = options;
  let closing = false;
  const shutdown = (signal: string): void => {
    if (closing) {
      logger.warn({ signal }, 'second signal: exiting now');
      process.exit(1);
    }
    closing = true;
    logger.info({ signal }, 'shutting down');
    const timer = setTimeout(() => {
      logger.error({ timeoutMs: options.shutdownTimeoutMs }, 'shutdown timed out');
      process.exit(1);
    }, options.shutdownTimeoutMs);
    timer.unref();
    const flush = async (): Promise<void> => {
      await options.telemetry?.shutdown().catch(() => undefined);
    };
    service.close().then(
      async () => {
        logger.info('stopped');
        await flush();
        process.exit(0);
      },
      async (error: unknown) => {
        logger.error({ err: error }, 'shutdown failed');
        await flush();
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);
  await service.start();
}

/** Reports a start-up failure the way an operator wants to read it, and exits 1. */
export function exitOnStartupError(error: unknown, logger?: Logger): never {
  if (error instanceof ConfigError) {
    process.stderr.write(`${error.message}\n`);
  } else if (logger !== undefined) {
    logger.fatal({ err: error }, 'failed to start');
  } else {
    process.stderr.write(`failed to start: ${String(error)}\n`);
  }
  process.exit(1);
}

/**
 * Resolves as `promise` does, or rejects with `reason()` as soon as `signal` aborts (the
 * promise is left to settle on its own): for waits that take no signal themselves.
 */
export function untilAborted<T>(
  promise: Promise<T>,
  signal: AbortSignal,
  reason: () => Error = () => new Error('aborted'),
): Promise<T> {
  if (signal.aborted) {
    return Promise.reject(reason());
  }
  return new Promise((resolve, reject) => {
    const onAbort = (): void => reject(reason());
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (error: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(error instanceof Error ? error : new Error(String(error)));
      },
    );
  });
}
