/** Fetches one piece from a peer or the seed server over HTTP, with a timeout and a signal. */
import { Agent, request } from 'node:http';

import { piecePath } from '@shoal/proto';
import { injectHttp, ShoalError } from '@shoal/runtime';

export class PieceFetchError extends ShoalError<
  'PIECE_STATUS' | 'PIECE_LENGTH' | 'PIECE_TIMEOUT' | 'PIECE_RATIONED'
> {
  override readonly name = 'PieceFetchError';
}

const EMPTY = Buffer.alloc(0);

export class PieceClient {
  readonly #agent = new Agent({ keepAlive: true, maxSockets: 16 });
  readonly #timeoutMs: number;

  constructor(timeoutMs: number) {
    this.#timeoutMs = timeoutMs;
  }

  /**
   * The piece's bytes (exactly `length` of them), or an error. Holds one piece in memory, in a
   * buffer from `alloc`.
   */
  async fetch(
    baseUrl: string,
    blob: string,
    index: number,
    length: number,
    signal: AbortSignal,
    alloc: (size: number) => Buffer = (size) => Buffer.allocUnsafe(size),
  ): Promise<Buffer> {
    let piece: Buffer = EMPTY;
    await this.stream(
      baseUrl,
      blob,
      index,
      length,
      signal,
      length,
      (block) => {
        piece = block;
      },
      alloc,
    );
    return piece;
  }

  /**
   * Fetches the piece in blocks of `blockBytes` (the last one shorter): every socket chunk is
   * copied into the current block as it arrives, with no promise per chunk, and `sink` gets
   * each block once full, with its offset in the piece. While a sink's promise is pending the
   * response is paused, so memory stays at about one block. Fails unless exactly `length`
   * bytes arrive; settles only after the last sink has, so a caller that aborts and awaits
   * the request knows nothing more will be written. Blocks come from `alloc`.
   */
  stream(
    baseUrl: string,
    blob: string,
    index: number,
    length: number,
    signal: AbortSignal,
    blockBytes: number,
    sink: (block: Buffer, offset: number) => Promise<void> | void,
    alloc: (size: number) => Buffer = (size) => Buffer.allocUnsafe(size),
  ): Promise<void> {
    const url = new URL(piecePath(blob, index), baseUrl);
    return new Promise((resolve, reject) => {
      // The active span's context goes along, so the peer's span joins this trace.
      const headers = {};
      injectHttp(headers);
      const req = request(url, { agent: this.#agent, signal, timeout: this.#timeoutMs, headers });
      const timer = setTimeout(() => {
        req.destroy(
          new PieceFetchError(
            'PIECE_TIMEOUT',
            504,
            `piece ${index} from ${url.host} took too long`,
          ),
        );
      }, this.#timeoutMs);
      // The sinks' writes in progress: the promise settles only after them.
      let sinking: Promise<void> | undefined;
      let settled = false;
      const fail = (error: Error): void => {
        if (settled) {
          return;
        }
        settled = true;
        clearTimeout(timer);
        req.destroy();
        void (sinking ?? Promise.resolve()).catch(() => undefined).then(() => reject(error));
      };
      req.once('response', (res) => {
        if (res.statusCode !== 200) {
          res.resume();
          fail(
            res.statusCode === 429
              ? new PieceFetchError(
                  'PIECE_RATIONED',
                  429,
                  `${url.host} asks to get piece ${index} from a peer`,
                )
              : new PieceFetchError(
                  'PIECE_STATUS',
                  502,
                  `piece ${index} from ${url.host}: ${String(res.statusCode)}`,
                ),
          );
          return;
        }
        let received = 0;
        let block = length === 0 ? EMPTY : alloc(Math.min(blockBytes, length));
        let filled = 0;
        const deliver = (): void => {
          const pending = sink(block, received - filled);
          filled = 0;
          block = received < length ? alloc(Math.min(blockBytes, length - received)) : EMPTY;
          if (pending === undefined) {
            return;
          }
          res.pause();
          const previous = sinking ?? Promise.resolve();
          const current: Promise<void> = Promise.all([previous, pending]).then(() => {
            if (sinking === current) {
              sinking = undefined;
              res.resume();
            }
          });
          sinking = current;
          current.catch((error: unknown) =>
            fail(error instanceof Error ? error : new Error(String(error))),
          );
        };
        res.on('data', (chunk: Buffer) => {
          if (settled) {
            return;
          }
          if (received + chunk.length > length) {
            fail(
              new PieceFetchError(
                'PIECE_LENGTH',
                502,
                `piece ${index} from ${url.host} is too long`,
              ),
            );
            return;
          }
          let offset = 0;
          while (offset < chunk.length) {
            const take = Math.min(chunk.length - offset, block.length - filled);
            chunk.copy(block, filled, offset, offset + take);
            filled += take;
            received += take;
            offset += take;
            if (filled === block.length) {
              deliver();
            }
          }
        });
        res.once('end', () => {
          if (settled) {
            return;
          }
          if (received !== length) {
            fail(
              new PieceFetchError(
                'PIECE_LENGTH',
                502,
                `piece ${index} from ${url.host}: ${received} of ${length} bytes`,
              ),
            );
            return;
          }
          if (length === 0) {
            deliver();
          }
          // A sink that fails has failed the request already.
          void (sinking ?? Promise.resolve()).then(
            () => {
              if (!settled) {
                settled = true;
                clearTimeout(timer);
                resolve();
              }
            },
            () => undefined,
          );
        });
        res.once('error', (error) => fail(error));
        res.once('close', () => {
          if (!res.complete) {
            fail(new Error(`piece ${index} from ${url.host}: connection closed early`));
          }
        });
      });
      req.once('timeout', () =>
        req.destroy(
          new PieceFetchError('PIECE_TIMEOUT', 504, `piece ${index} from ${url.host} went quiet`),
        ),
      );
      req.once('error', (error) => fail(error));
      req.end();
    });
  }

  close(): void {
    this.#agent.destroy();
  }
}
