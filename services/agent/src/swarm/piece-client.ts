/** Fetches one piece from a peer or the seed server over HTTP, with a timeout. */
import { Agent, request } from 'node:http';

import { piecePath } from '@shoal/proto';
import { ShoalError } from '@shoal/runtime';

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

  /** The piece's bytes (exactly `length` of them), or an error. Holds one piece in memory. */
  fetch(
    baseUrl: string,
    blob: string,
    index: number,
    length: number,
    signal: AbortSignal,
  ): Promise<Buffer> {
    const url = new URL(piecePath(blob, index), baseUrl);
    return new Promise((resolve, reject) => {
      const req = request(url, { agent: this.#agent, signal, timeout: this.#timeoutMs });
      const timer = setTimeout(() => {
        req.destroy(
          new PieceFetchError(
            'PIECE_TIMEOUT',
            504,
            `piece ${index} from ${url.host} took too long`,
          ),
        );
      }, this.#timeoutMs);
      req.once('response', (res) => {
        if (res.statusCode !== 200) {
          res.resume();
          clearTimeout(timer);
          reject(
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
        const buffer = Buffer.allocUnsafe(length);
        let received = 0;
        res.on('data', (chunk: Buffer) => {
          if (received + chunk.length > length) {
            req.destroy(
              new PieceFetchError(
                'PIECE_LENGTH',
                502,
                `piece ${index} from ${url.host} is too long`,
              ),
            );
            return;
          }
          chunk.copy(buffer, received);
          received += chunk.length;
        });
        res.once('end', () => {
          clearTimeout(timer);
          if (received === length) {
            resolve(buffer);
          } else {
            reject(
              new PieceFetchError(
                'PIECE_LENGTH',
                502,
                `piece ${index} from ${url.host}: ${received} of ${length} bytes`,
              ),
            );
          }
        });
        res.once('error', (error) => {
          clearTimeout(timer);
          reject(error);
        });
      });
      req.once('timeout', () =>
        req.destroy(
          new PieceFetchError('PIECE_TIMEOUT', 504, `piece ${index} from ${url.host} went quiet`),
        ),
      );
      req.once('error', (error) => {
        clearTimeout(timer);
        reject(error);
      });
      req.end();
    });
  }

  close(): void {
    this.#agent.destroy();
  }
}
