/**
 * Rate limits that change without a redeploy: a small JSON file (in Kubernetes, a mounted
 * ConfigMap, which the kubelet updates in place) read again whenever it changes:
 *
 *   { "uploadRateBytes": 52428800, "downloadRateBytes": 0 }
 *
 * A field left out keeps the limit from the environment; 0 means unlimited. A file that does
 * not parse is reported and ignored, and the limits in force stay.
 */
import { readFile, stat } from 'node:fs/promises';

import { RateLimiter, type Logger } from '@shoal/runtime';
import { z } from 'zod';

import type { AgentMetrics } from '../metrics.js';

const limitsFile = z.strictObject({
  uploadRateBytes: z.int().nonnegative().optional(),
  downloadRateBytes: z.int().nonnegative().optional(),
});

export interface LimitTargets {
  readonly upload: RateLimiter;
  readonly download: RateLimiter;
  /** The limits from the environment, used for fields the file leaves out. */
  readonly defaults: { readonly upload: number; readonly download: number };
  /**
   * Hears of a version of the file that was not applied (the limits in force stay): it could
   * not be read, or it is not valid.
   */
  readonly onRejected?: (reason: 'unreadable' | 'invalid') => void;
}

/** The agent's upload and download budgets, shared by every transfer. */
export interface TransferLimits {
  /** Pieces served to peers. */
  readonly upload: RateLimiter;
  /** Pieces fetched from the swarm. */
  readonly download: RateLimiter;
}

/**
 * Creates the budgets from the environment's rates (bytes/s, 0: none). They exist before the
 * swarm does, so the peer listener can be built while NATS is still out of reach.
 */
export function createTransferLimits(
  rates: { readonly uploadRateBytes: number; readonly downloadRateBytes: number },
  metrics: AgentMetrics,
): TransferLimits {
  return {
    upload: new RateLimiter(rates.uploadRateBytes, () =>
      metrics.rateLimitWaits.inc({ direction: 'upload' }),
    ),
    download: new RateLimiter(rates.downloadRateBytes, () =>
      metrics.rateLimitWaits.inc({ direction: 'download' }),
    ),
  };
}

/** Watches `path` every `intervalMs` and applies its limits; `stop` ends the watch. */
export function watchLimits(
  path: string,
  targets: LimitTargets,
  logger: Logger,
  intervalMs = 5_000,
): { check(): Promise<void>; stop(): void } {
  let lastSeen = '';
  const check = async (): Promise<void> => {
    let text: string;
    try {
      const info = await stat(path);
      const stamp = `${info.mtimeMs}:${info.size}`;
      if (stamp === lastSeen) {
        return;
      }
      lastSeen = stamp;
      text = await readFile(path, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') {
        logger.warn({ err: error, path }, 'cannot read the limits file');
        targets.onRejected?.('unreadable');
      }
      return;
    }
    let parsed: z.infer<typeof limitsFile>;
    try {
      parsed = limitsFile.parse(JSON.parse(text));
    } catch (error) {
      logger.warn({ path, error: String(error).slice(0, 512) }, 'limits file ignored: not valid');
      targets.onRejected?.('invalid');
      return;
    }
    const upload = parsed.uploadRateBytes ?? targets.defaults.upload;
    const download = parsed.downloadRateBytes ?? targets.defaults.download;
    targets.upload.setRate(upload);
    targets.download.setRate(download);
    logger.info(
      { path, uploadRateBytes: upload, downloadRateBytes: download },
      'rate limits applied',
    );
  };
  const timer = setInterval(() => void check(), intervalMs);
  timer.unref();
  return { check, stop: () => clearInterval(timer) };
}
