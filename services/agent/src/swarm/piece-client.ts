/** Fetches one piece from a peer or the seed server over HTTP, with a timeout and a signal. */
import { Agent, request } from 'node:http';

import { piecePath } from '@shoal/proto';
import { injectHttp, ShoalError } from '@shoal/runtime';

export class PieceFetchError extends ShoalError<
  'PIECE_STATUS' | 'PIECE_LENGTH' | 'PIECE_TIMEOUT' | 'PIECE_RATIONED'
> {
  override readonly name = 'PieceFetchError';
}

export class PieceClient {
  readonly #agent = new Agent({ keepAlive: true, maxSockets: 16 });
  readonly #timeoutMs: number;

  constructor(timeoutMs: number) {
    this.#timeoutMs = timeoutMs;
  }

  /**
   * The piece's bytes (exactly `length` of them), or an error. Holds one piece in memory.
   * `auth`: the hand-out token headers (`pieceAuthHeaders`) the serving side requires.
   */
  async fetch(
    baseUrl: string,
    blob: string,
    index: number,
    length: number,
    signal: AbortSignal,
    auth?: Readonly<Record<string, string>>,
  ): Promise<Buffer> {
    const buffer = Buffer.allocUnsafe(length);
    await this.stream(
      baseUrl,
      blob,
      index,
      length,
      signal,
      (chunk, offset) => {
        chunk.copy(buffer, offset);
        return Promise.resolve();
      },
      auth,
    );
    return buffer;
  }

  /**
   * Streams the piece to `sink` chunk by chunk (with the chunk's offset in the piece), waiting
   * for each chunk to be taken before reading on, so memory stays at one socket chunk. Fails
   * unless exactly `length` bytes arrive.
   */
  stream(
    baseUrl: string,
    blob: string,
    index: number,
    length: number,
    signal: AbortSignal,
    sink: (chunk: Buffer, offset: number) => Promise<void>,
    auth?: Readonly<Record<string, string>>,
  ): Promise<void> {
    const url = new URL(piecePath(blob, index), baseUrl);
    return new Promise((resolve, reject) => {
      // The active span's context goes along, so the peer's span joins this trace.
      const headers: Record<string, string> = { ...auth };
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
      // The sink's write in progress: the promise settles only after it, so a caller that
      // aborts and awaits this request knows nothing more will be written.
      let sinking: Promise<void> | undefined;
      const fail = (error: Error): void => {
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
        void (async () => {
          let received = 0;
          try {
            for await (const chunk of res as AsyncIterable<Buffer>) {
              if (received + chunk.length > length) {
                throw new PieceFetchError(
                  'PIECE_LENGTH',
                  502,
                  `piece ${index} from ${url.host} is too long`,
                );
              }
              sinking = sink(chunk, received);
              await sinking;
              sinking = undefined;
              received += chunk.length;
            }
            if (received !== length) {
              throw new PieceFetchError(
                'PIECE_LENGTH',
                502,
                `piece ${index} from ${url.host}: ${received} of ${length} bytes`,
              );
            }
            clearTimeout(timer);
            resolve();
          } catch (error) {
            fail(error instanceof Error ? error : new Error(String(error)));
          }
        })();
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
