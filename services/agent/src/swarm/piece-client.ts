/** Fetches one piece from a peer or the seed server over HTTP, with a timeout and a signal. */
import { piecePath } from '@shoal/proto';
import { injectHttp, ShoalError } from '@shoal/runtime';

import { PieceHttpClient, type PieceTlsOptions } from './piece-http.js';

export class PieceFetchError extends ShoalError<
  'PIECE_STATUS' | 'PIECE_LENGTH' | 'PIECE_TIMEOUT' | 'PIECE_RATIONED'
> {
  override readonly name = 'PieceFetchError';
}

const EMPTY = Buffer.alloc(0);

export class PieceClient {
  readonly #http: PieceHttpClient;
  readonly #timeoutMs: number;

  /** `tls`: how `https://` peers and seed servers are reached (default: the system's CAs). */
  constructor(timeoutMs: number, tls?: PieceTlsOptions) {
    this.#timeoutMs = timeoutMs;
    this.#http = new PieceHttpClient(tls);
  }

  /**
   * The piece's bytes (exactly `length` of them), or an error. Holds one piece in memory, in a
   * buffer from `alloc`. `auth`: the hand-out token headers (`pieceAuthHeaders`) the serving
   * side requires.
   */
  async fetch(
    baseUrl: string,
    blob: string,
    index: number,
    length: number,
    signal: AbortSignal,
    alloc: (size: number) => Buffer = (size) => Buffer.allocUnsafe(size),
    auth?: Readonly<Record<string, string>>,
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
      auth,
    );
    return piece;
  }

  /**
   * Fetches the piece in blocks of `blockBytes` (the last one shorter): the body is copied into
   * the current block as it is read, with no promise per socket read, and `sink` gets each
   * block once full, with its offset in the piece. While a sink's promise is pending reading
   * pauses, so memory stays at about one block. Fails unless exactly `length` bytes arrive;
   * settles only after the last sink has, so a caller that aborts and awaits the request knows
   * nothing more will be written. Blocks come from `alloc`; `auth` headers go with the request.
   */
  async stream(
    baseUrl: string,
    blob: string,
    index: number,
    length: number,
    signal: AbortSignal,
    blockBytes: number,
    sink: (block: Buffer, offset: number) => Promise<void> | void,
    alloc: (size: number) => Buffer = (size) => Buffer.allocUnsafe(size),
    auth?: Readonly<Record<string, string>>,
  ): Promise<void> {
    const url = new URL(piecePath(blob, index), baseUrl);
    // The active span's context goes along, so the peer's span joins this trace.
    const headers: Record<string, string> = { ...auth };
    injectHttp(headers);
    let received = 0;
    let block: Buffer = EMPTY;
    let filled = 0;
    const deliver = (): Promise<void> | void => {
      const result = sink(block, received - filled);
      filled = 0;
      block = received < length ? alloc(Math.min(blockBytes, length - received)) : EMPTY;
      return result;
    };
    await this.#http.get(
      url,
      {
        headers,
        signal,
        timeoutMs: this.#timeoutMs,
        timeoutError: (kind) =>
          new PieceFetchError(
            'PIECE_TIMEOUT',
            504,
            kind === 'total'
              ? `piece ${index} from ${url.host} took too long`
              : `piece ${index} from ${url.host} went quiet`,
          ),
      },
      {
        onHead: (status, announced) => {
          if (status === 429) {
            throw new PieceFetchError(
              'PIECE_RATIONED',
              429,
              `${url.host} asks to get piece ${index} from a peer`,
            );
          }
          if (status !== 200) {
            throw new PieceFetchError(
              'PIECE_STATUS',
              502,
              `piece ${index} from ${url.host}: ${String(status)}`,
            );
          }
          if (announced !== undefined && announced !== length) {
            throw new PieceFetchError(
              'PIECE_LENGTH',
              502,
              `piece ${index} from ${url.host}: ${announced} bytes announced, ${length} expected`,
            );
          }
          block = length === 0 ? EMPTY : alloc(Math.min(blockBytes, length));
        },
        onBody: (bytes) => {
          if (received + bytes.length > length) {
            throw new PieceFetchError(
              'PIECE_LENGTH',
              502,
              `piece ${index} from ${url.host} is too long`,
            );
          }
          let waits: Promise<void>[] | undefined;
          let offset = 0;
          while (offset < bytes.length) {
            const take = Math.min(bytes.length - offset, block.length - filled);
            bytes.copy(block, filled, offset, offset + take);
            filled += take;
            received += take;
            offset += take;
            if (filled === block.length) {
              const pending = deliver();
              if (pending !== undefined) {
                (waits ??= []).push(pending);
              }
            }
          }
          return waits === undefined ? undefined : Promise.all(waits).then(() => undefined);
        },
      },
    );
    if (received !== length) {
      throw new PieceFetchError(
        'PIECE_LENGTH',
        502,
        `piece ${index} from ${url.host}: ${received} of ${length} bytes`,
      );
    }
    if (length === 0) {
      await sink(EMPTY, 0);
    }
  }

  close(): void {
    this.#http.close();
  }
}
