/**
 * A consume loop that keeps running: when the consumer's iterator fails or ends (the server
 * restarted, the consumer was deleted, the stream was recreated) it is reopened after a
 * delay, until `stop` is called. Handlers run one message at a time, in order, unless a
 * concurrency is given: then up to that many run at once (for work queues, where order does
 * not matter and each message is long work). A backlog is handled in slices of the event loop
 * (`EventLoopSlice`): the process's other work runs between them. With a concurrency, a slice
 * counts what the handlers run before their first `await`, not what they do after it.
 */
import type { ConsumerMessages, JsMsg } from '@nats-io/jetstream';
import type { Logger } from 'pino';

import { EventLoopSlice } from './event-loop-slice.js';

export interface SuperviseOptions {
  /** Names the consumer in logs. */
  readonly name: string;
  readonly logger: Logger;
  /** Opens the consumer's message iterator; called again after every failure. */
  readonly open: () => Promise<ConsumerMessages>;
  /** Handles one message. It should not throw; if it does, the error is logged and skipped. */
  readonly handle: (msg: JsMsg) => Promise<void> | void;
  /**
   * Called instead of `handle` for messages still delivered after `stop`; a work-queue
   * consumer naks them so another replica takes them at once rather than after the ack wait.
   */
  readonly release?: (msg: JsMsg) => void;
  /** Wait before reopening after a failure, in ms. */
  readonly retryDelayMs: number;
  /**
   * When given, the waits are spread and grow: the wait after the n-th failure in a row is
   * drawn at random from [0, min(maxDelayMs, retryDelayMs × 2^(n-1))] ("full jitter"), and an
   * open that succeeds starts the count again. For consumers many processes hold (one per
   * node): after a NATS outage they do not all come back in the same second.
   */
  readonly backoff?: {
    /** The longest wait, in ms. */
    readonly maxDelayMs: number;
    /** A number in [0, 1) (default Math.random); tests pass their own. */
    readonly random?: () => number;
  };
  /** Messages handled at once (default 1: one at a time, in order). */
  readonly concurrency?: number;
}

export interface ConsumeLoop {
  /** Stops pulling, lets the message being handled finish, and resolves when the loop ends. */
  stop(): Promise<void>;
  /**
   * Closes the consumer's iterator so the loop opens it again (after `retryDelayMs`): for a
   * consumer or stream made anew under it (a NATS server back with an empty store), which
   * the iterator it holds would never deliver from.
   */
  reopen(): Promise<void>;
}

/** The wait before reopening after `failures` failures in a row (see `backoff`), in ms. */
export function retryDelay(
  options: Pick<SuperviseOptions, 'retryDelayMs' | 'backoff'>,
  failures: number,
): number {
  const { backoff } = options;
  if (backoff === undefined) {
    return options.retryDelayMs;
  }
  const ceiling = Math.min(
    backoff.maxDelayMs,
    options.retryDelayMs * 2 ** Math.max(0, Math.min(failures - 1, 30)),
  );
  return Math.floor((backoff.random ?? Math.random)() * ceiling);
}

export function superviseConsumption(options: SuperviseOptions): ConsumeLoop {
  const { logger, name } = options;
  const stopping = new AbortController();
  // A function, not the property, so checks after an await are not narrowed away.
  const stopped = (): boolean => stopping.signal.aborted;
  let current: ConsumerMessages | undefined;
  const concurrency = Math.max(1, options.concurrency ?? 1);
  const inFlight = new Set<Promise<void>>();
  const slice = new EventLoopSlice();
  const handleOne = async (msg: JsMsg): Promise<void> => {
    try {
      await options.handle(msg);
    } catch (error) {
      logger.error({ err: error, consumer: name, subject: msg.subject }, 'handler failed');
    }
  };

  let failures = 0;
  const loop = async (): Promise<void> => {
    while (!stopped()) {
      failures += 1;
      try {
        const messages = await options.open();
        current = messages;
        failures = 0;
        if (stopped()) {
          await messages.close();
          break;
        }
        for await (const msg of messages) {
          if (stopped()) {
            options.release?.(msg);
            continue;
          }
          if (concurrency === 1) {
            const startedAt = slice.start();
            await handleOne(msg);
            await slice.after(startedAt);
            continue;
          }
          while (inFlight.size >= concurrency) {
            await Promise.race(inFlight);
          }
          if (stopped()) {
            options.release?.(msg);
            continue;
          }
          // Only the handler's first synchronous stretch runs in this loop, and is counted.
          const startedAt = slice.start();
          const run = handleOne(msg);
          inFlight.add(run);
          void run.finally(() => inFlight.delete(run));
          await slice.after(startedAt);
        }
        if (!stopped()) {
          logger.warn({ consumer: name }, 'consumer ended; reopening');
        }
      } catch (error) {
        if (stopped()) {
          break;
        }
        logger.warn({ err: error, consumer: name }, 'consumer failed; reopening');
      }
      await delay(retryDelay(options, Math.max(1, failures)), stopping.signal);
    }
  };
  const running = loop();

  return {
    stop: async () => {
      stopping.abort();
      await current?.close();
      await running;
      await Promise.allSettled(inFlight);
    },
    reopen: async () => {
      await current?.close();
    },
  };
}

/** Resolves after `ms`, or at once when `signal` aborts. */
function delay(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) {
      resolve();
      return;
    }
    const done = (): void => {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener('abort', done, { once: true });
  });
}
