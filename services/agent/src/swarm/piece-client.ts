/** Fetches one piece from a peer or the seed server over HTTP, with a timeout and a signal. */
import { decodePieceBitmap, PIECE_RATIONED_HEADER, piecePath } from '@shoal/proto';
import { injectHttp, ShoalError, unreachableCode } from '@shoal/runtime';

import { RawHttpClient, type RawTlsOptions } from '@shoal/runtime/raw-http';
import { RateFloor, watchRateFloor } from './rate-floor.js';
import { SourceSilence } from './source-silence.js';

export class PieceFetchError extends ShoalError<
  | 'PIECE_STATUS'
  /** The source answered 404: it does not hold the piece (any more). */
  | 'PIECE_MISSING'
  | 'PIECE_LENGTH'
  | 'PIECE_TIMEOUT'
  | 'PIECE_RATIONED'
  | 'PIECE_UNREACHABLE'
  | 'PIECE_SILENT'
> {
  override readonly name = 'PieceFetchError';
  /**
   * With `PIECE_RATIONED` from a seed server: the other pieces of the blob it refuses now
   * (`PIECE_RATIONED_HEADER`), empty when it did not say.
   */
  rationed: readonly number[] = [];
}

/**
 * A connection error that says nothing answers at the source's address or name
 * (`unreachableCode`: a peer or seed server that stopped, though the tracker may name it for a
 * while yet) is definite at once, so it shares the refused source's short, doubling penalty. A
 * connection never accepted (a host that vanished, or a stale address that drops the SYN) ends
 * at the connect timeout as a silence (`PIECE_SILENT`), which takes the same path.
 */
const NAME_CODES = new Set(['ENOTFOUND', 'EAI_AGAIN']);

const EMPTY = Buffer.alloc(0);

/**
 * How many of a source's recent gaps between reads it must stay silent to be given up (above
 * the floor, `silenceMinMs`): on a slow link shared by many answers the gaps are long, and the
 * limit grows with them.
 */
const SILENCE_GAP_FACTOR = 10;

/** When a piece request is given up while it runs. */
export interface PieceTimeouts {
  /** Longest the connection may stay silent, in ms; also the grace before the rate floor. */
  readonly idleTimeoutMs: number;
  /** Slowest average rate accepted after the grace, in bytes/s; 0: none. */
  readonly minRateBytes: number;
  /**
   * Longest a new connection may take to connect, in ms (a vanished host answers no SYN);
   * absent: only the idle timeout bounds it.
   */
  readonly connectTimeoutMs?: number;
  /**
   * Shortest silence of a source that is answering (no byte on any of its connections) after
   * which every request to it is given up, in ms; the limit follows the source's own pace
   * above it (`source-silence.ts`). Absent or 0: only the idle timeout.
   */
  readonly silenceMinMs?: number;
}

export class PieceClient {
  readonly #http: RawHttpClient;
  readonly #timeouts: PieceTimeouts;
  /** Which sources went silent, judged per source across its requests. */
  readonly #silence: SourceSilence;

  /** `tls`: how `https://` peers and seed servers are reached (default: the system's CAs). */
  constructor(timeouts: PieceTimeouts, tls?: RawTlsOptions) {
    this.#timeouts = timeouts;
    this.#http = new RawHttpClient(tls);
    this.#silence = new SourceSilence({
      minMs: timeouts.silenceMinMs ?? 0,
      maxMs: timeouts.idleTimeoutMs,
      factor: SILENCE_GAP_FACTOR,
    });
  }

  /**
   * The piece's bytes (exactly `length` of them), or an error. Holds one piece in memory, in a
   * buffer from `alloc`. `auth`: the hand-out token headers (`pieceAuthHeaders`) the serving
   * side requires; `onBytes`: told of the body's bytes as they arrive (see `stream`).
   */
  async fetch(
    baseUrl: string,
    blob: string,
    index: number,
    length: number,
    signal: AbortSignal,
    alloc: (size: number) => Buffer = (size) => Buffer.allocUnsafe(size),
    auth?: Readonly<Record<string, string>>,
    onBytes?: (count: number) => void,
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
      onBytes,
    );
    return piece;
  }

  /**
   * Fetches the piece in blocks of `blockBytes` (the last one shorter): the body is read into
   * the current block (from the socket directly, past the bytes that came with the response's
   * head), with no promise per socket read, and `sink` gets each
   * block once full, with its offset in the piece. While a sink's promise is pending reading
   * pauses, so memory stays at about one block. Fails unless exactly `length` bytes arrive;
   * settles only after the last sink has, so a caller that aborts and awaits the request knows
   * nothing more will be written. Blocks come from `alloc`; `auth` headers go with the request.
   * `onBytes` is told how many body bytes each socket read brought (before the piece is whole
   * or verified): a caller waiting on a slow link sees the bytes move, not only whole pieces.
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
    onBytes?: (count: number) => void,
  ): Promise<void> {
    const url = new URL(piecePath(blob, index), baseUrl);
    // The active span's context goes along, so the peer's span joins this trace.
    const headers: Record<string, string> = { ...auth };
    injectHttp(headers);
    let received = 0;
    let block: Buffer = EMPTY;
    let filled = 0;
    const slow = new AbortController();
    // A source that goes silent while answering gives up this request with every other to it.
    const silence = this.#silence.open(url.origin, (silentMs) => {
      // Its idle connections are as dead as the busy ones: none is reused.
      this.#http.dropIdle(url);
      slow.abort(
        new PieceFetchError(
          'PIECE_SILENT',
          504,
          `${url.host} sent nothing for ${silentMs} ms while answering (piece ${index})`,
        ),
      );
    });
    const deliver = (): Promise<void> | void => {
      const result = sink(block, received - filled);
      filled = 0;
      block = received < length ? alloc(Math.min(blockBytes, length - received)) : EMPTY;
      if (result === undefined) {
        return undefined;
      }
      // Reading pauses while the sink works: a quiet that is ours, not the source's.
      silence.busy(true);
      return result.finally(() => silence.busy(false));
    };
    // No fixed time per piece: a request that keeps moving above the floor may take as long
    // as the link needs; one that falls below it is given up, so the piece goes elsewhere.
    const { idleTimeoutMs, minRateBytes, connectTimeoutMs } = this.#timeouts;
    const floor = new RateFloor({ graceMs: idleTimeoutMs, minBytesPerSecond: minRateBytes });
    const stopWatching = watchRateFloor(
      floor,
      slow,
      () =>
        new PieceFetchError(
          'PIECE_TIMEOUT',
          504,
          `piece ${index} from ${url.host} is below ${minRateBytes} bytes/s (${floor.received} of ${length} bytes)`,
        ),
    );
    // The caller's abort reaches the request through the rate floor's controller: one
    // listener, removed when the request ends, rather than `AbortSignal.any` per piece (a
    // signal kept alive by weak references and a finalizer until the collector gets to it).
    const onAbort = (): void => slow.abort(signal.reason);
    if (signal.aborted) {
      onAbort();
    } else {
      signal.addEventListener('abort', onAbort, { once: true });
    }
    const exchange = this.#http.get(
      url,
      {
        headers,
        signal: slow.signal,
        timeoutMs: idleTimeoutMs,
        ...(connectTimeoutMs === undefined ? {} : { connectTimeoutMs }),
        timeoutError: (kind) =>
          kind === 'connect'
            ? new PieceFetchError(
                'PIECE_SILENT',
                504,
                `${url.host} did not accept a connection within ${connectTimeoutMs ?? idleTimeoutMs} ms`,
              )
            : new PieceFetchError(
                'PIECE_TIMEOUT',
                504,
                `piece ${index} from ${url.host} went quiet`,
              ),
      },
      {
        onHead: (status, announced, answer) => {
          silence.read();
          if (status === 429) {
            const error = new PieceFetchError(
              'PIECE_RATIONED',
              429,
              `${url.host} asks to get piece ${index} from a peer`,
            );
            error.rationed = decodePieceBitmap(answer[PIECE_RATIONED_HEADER]);
            throw error;
          }
          if (status === 404) {
            throw new PieceFetchError(
              'PIECE_MISSING',
              502,
              `piece ${index} from ${url.host}: 404, it does not hold it`,
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
          silence.read();
          floor.record(bytes.length);
          onBytes?.(bytes.length);
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
        // The body is read from the socket straight into the current block (no copy, and
        // reads as large as its free room): `onBody` above only sees what came in with the
        // response's head.
        bodyBuffer: () => (filled < block.length ? block.subarray(filled) : undefined),
        onBodyRead: (count) => {
          silence.read();
          floor.record(count);
          onBytes?.(count);
          filled += count;
          received += count;
          return filled === block.length ? deliver() : undefined;
        },
      },
    );
    await exchange
      .finally(() => {
        silence.close();
        stopWatching();
        signal.removeEventListener('abort', onAbort);
      })
      .catch((error: unknown) => {
        const code = unreachableCode(error);
        if (code === undefined) {
          throw error;
        }
        const what = NAME_CODES.has(code) ? 'does not resolve' : 'refuses connections';
        throw new PieceFetchError('PIECE_UNREACHABLE', 503, `${url.host} ${what} (${code})`, {
          cause: error,
        });
      });
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
