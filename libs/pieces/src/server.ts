/**
 * The one piece server of the agent (serving peers) and the seed server (serving agents):
 * `GET /pieces/<algorithm>/<hex>/<index>` answered with the piece's bytes.
 *
 * Every request is bounded before a byte is read: the concurrent-upload cap (and, where set, a
 * cap per asking peer) answers 429 with `retry-after` past it, so the asker tries another holder
 * meanwhile; the upload budget is taken before the piece is read, so a queued request holds no
 * piece in memory; and an answer that takes longer than the timeout from its slot to its last
 * byte has its connection closed, which frees the slot. Who may ask at all is decided before
 * this handler runs (the piece authentication preHandler of `@shoal/runtime`).
 */
import {
  parseDigest,
  peerId,
  PIECE_PEER_HEADER,
  PIECE_NOT_FROM_HEADER,
  PIECE_UNHEARD_HEADER,
  PIECE_STARVED_HEADER,
  starvedLateMs,
  notFromPeers,
} from '@shoal/proto';
import type { FastifyReply, FastifyRequest } from 'fastify';

import type { PieceBuffers } from './buffers.js';

/** The route both services serve pieces on. */
export const PIECE_ROUTE = '/pieces/:algorithm/:hex/:index';

export interface PieceRoute {
  Params: { algorithm: string; hex: string; index: string };
}
export type PieceRequest = FastifyRequest<PieceRoute>;

/**
 * The id the asking agent sends (`PIECE_PEER_HEADER`, checked against its hand-out token when
 * piece authentication is on), or undefined when it sent none.
 */
export function askingPeerId(request: PieceRequest): string | undefined {
  const header = request.headers[PIECE_PEER_HEADER];
  return typeof header === 'string' && peerId.safeParse(header).success ? header : undefined;
}

/** Who asks for a piece, as the request says (for the seed's rationing). */
export interface PieceAsk {
  /** The asking agent's id (`askingPeerId`), when it sent one. */
  readonly asker: string | undefined;
  /** The peers it cannot get the piece from (`PIECE_NOT_FROM_HEADER`). */
  readonly notFrom: readonly string[];
  /** The swarm does not hear it now (`PIECE_UNHEARD_HEADER`). */
  readonly unheard: boolean;
  /** Its download's lateness, when the download starved (`PIECE_STARVED_HEADER`). */
  readonly starvedLateMs: number | undefined;
}

/** Who asks, whom it cannot get the piece from, and whether the swarm hears it. */
function askOf(request: PieceRequest): PieceAsk {
  const notFrom = request.headers[PIECE_NOT_FROM_HEADER];
  const starved = request.headers[PIECE_STARVED_HEADER];
  return {
    asker: askingPeerId(request),
    notFrom: notFromPeers(typeof notFrom === 'string' ? notFrom : undefined),
    unheard: request.headers[PIECE_UNHEARD_HEADER] === '1',
    starvedLateMs: starvedLateMs(typeof starved === 'string' ? starved : undefined),
  };
}

/** What a server holds of one blob. */
export interface PieceSource {
  /** Piece `index`'s length in bytes, or undefined when the blob has no such piece held. */
  pieceLength(index: number): number | undefined;
  /**
   * Reads piece `index` into `buffer` (exactly `pieceLength(index)` bytes) and returns the
   * bytes, or undefined when the piece is not held (any more).
   */
  readPiece(index: number, buffer: Buffer): Promise<Buffer | undefined>;
  /** Marks the blob in use until `release` (never evicted meanwhile); false when it is gone. */
  acquire(): boolean;
  release(): void;
}

/**
 * How a request ended: `served`, or why not — `invalid` (not a digest), `missing` (not held),
 * `busy` (every upload slot taken), `peer-busy` (the asking peer's slots taken), `rationed`
 * (the fan-out hook sent the asker elsewhere), `aborted` (the asker left before the bytes).
 */
export type PieceResult =
  'served' | 'invalid' | 'missing' | 'busy' | 'peer-busy' | 'rationed' | 'aborted';

/** One copy of a piece handed out by the fan-out hook: `end` once, when its response closed. */
export interface PieceTicket {
  /** `complete`: the copy was sent whole; false: it was cut off. */
  end(complete: boolean): void;
}

export interface PieceServerOptions {
  /**
   * The blob a digest (`algorithm:hex`) names, when held in any form: the same object for as
   * long as one copy of it is held (the seed's `ration` counts copies per object).
   */
  readonly source: (digest: string) => PieceSource | undefined;
  /** Where the buffers of the pieces read come from; each goes back once nothing reads it. */
  readonly buffers: PieceBuffers;
  /** The upload budget in bytes, taken (waited for) before a piece is read. */
  readonly uploadLimit: { take(bytes: number): Promise<void> };
  /**
   * Upload slots: pieces answered at once in all (`max`) and, when set, to one asker
   * (`perPeer`, told apart by `peerOf`); and the longest answer in ms from taking a slot to the
   * last byte (`timeoutMs`; past it the connection is closed and the slot freed).
   */
  readonly uploads: {
    readonly max: number;
    readonly perPeer?: number;
    readonly timeoutMs: number;
  };
  /** Who asks, for the per-peer cap (default: one asker). */
  readonly peerOf?: (request: PieceRequest) => string;
  /**
   * Fan-out rationing (the seed's), asked once a slot is free: a ticket to send this copy, or
   * undefined to send the asker to a peer (429). `source` is the blob the piece is read from,
   * as `source` returned it; `ask` says who asks and whom it cannot get the piece from.
   */
  readonly ration?: (source: PieceSource, index: number, ask: PieceAsk) => PieceTicket | undefined;
  /**
   * Headers for a request the ration refused, given what `ration` was given (what else it
   * would refuse this asker now, for one).
   */
  readonly rationedHeaders?: (
    source: PieceSource,
    ask: PieceAsk,
  ) => Readonly<Record<string, string>>;
  /** Test fault: flip the first byte of every piece served. */
  readonly corrupt?: boolean;
  /** Every request's outcome; `bytes` is the piece length for `served`. */
  readonly onResult: (result: PieceResult, bytes: number) => void;
  /** Answers in flight, after every change. */
  readonly onInFlight?: (uploads: number) => void;
}

/** The refusal's headers from the hook: a hint, so a hook that fails leaves them out. */
function rationedHeaders(
  options: PieceServerOptions,
  source: PieceSource,
  ask: PieceAsk,
): Readonly<Record<string, string>> {
  try {
    return options.rationedHeaders?.(source, ask) ?? {};
  } catch {
    return {};
  }
}

/** The handler for `PIECE_ROUTE`, with its upload slots. */
export function pieceHandler(
  options: PieceServerOptions,
): (request: PieceRequest, reply: FastifyReply) => Promise<FastifyReply> {
  const { buffers, uploads: limits, onResult } = options;
  let uploads = 0;
  /** Answers in flight by asker; an asker is dropped from the map when it has none. */
  const byPeer = new Map<string, number>();

  return async (request, reply) => {
    const { algorithm, hex, index } = request.params;
    let digest: string;
    try {
      digest = parseDigest(`${algorithm}:${hex}`).toString();
    } catch {
      onResult('invalid', 0);
      return reply.code(400).send({ error: 'not a digest' });
    }
    const piece = /^\d{1,9}$/.test(index) ? Number(index) : -1;
    const source = options.source(digest);
    const length = piece < 0 ? undefined : source?.pieceLength(piece);
    if (source === undefined || length === undefined) {
      onResult('missing', 0);
      return reply.code(404).send({ error: 'piece not held' });
    }
    // Bounded: past the caps askers are asked to come back (they try another holder
    // meanwhile). Checked before the ration, so that a request turned away uses none of the
    // piece's copies.
    const peer = options.peerOf?.(request) ?? '';
    const peerUploads = byPeer.get(peer) ?? 0;
    const refused =
      uploads >= limits.max
        ? 'busy'
        : limits.perPeer !== undefined && peerUploads >= limits.perPeer
          ? 'peer-busy'
          : undefined;
    if (refused !== undefined) {
      onResult(refused, 0);
      return reply.code(429).header('retry-after', '1').send({ error: refused });
    }
    const ask = askOf(request);
    const ticket = options.ration?.(source, piece, ask);
    if (options.ration !== undefined && ticket === undefined) {
      onResult('rationed', 0);
      return reply
        .code(429)
        .headers({ ...rationedHeaders(options, source, ask), 'retry-after': '1' })
        .send({ error: 'get this piece from a peer' });
    }
    // In use until the response is gone: the blob is never evicted while being served.
    if (!source.acquire()) {
      ticket?.end(false);
      onResult('missing', 0);
      return reply.code(404).send({ error: 'piece not held' });
    }
    // Counted until the response is gone, so the caps bound the pieces held in memory.
    uploads += 1;
    byPeer.set(peer, peerUploads + 1);
    options.onInFlight?.(uploads);
    // Changed by the close handler and the read, each seeing the other's changes.
    const state: {
      buffer: Buffer | undefined;
      reading: boolean;
      closed: boolean;
      sending: boolean;
    } = { buffer: undefined, reading: false, closed: false, sending: false };
    const deadline = setTimeout(() => {
      request.raw.socket.destroy();
    }, limits.timeoutMs);
    reply.raw.once('close', () => {
      state.closed = true;
      const complete = state.sending && reply.raw.writableFinished;
      // The copy counts as spread only when the asker got all of it.
      ticket?.end(complete);
      clearTimeout(deadline);
      uploads -= 1;
      const left = (byPeer.get(peer) ?? 1) - 1;
      if (left > 0) {
        byPeer.set(peer, left);
      } else {
        byPeer.delete(peer);
      }
      options.onInFlight?.(uploads);
      source.release();
      // Written out whole, or never handed to the socket: the buffer may serve the next piece.
      // Not after a cut response (the socket may still hold it), nor while a read into it is
      // still running (it goes back when that ends).
      if (state.buffer !== undefined && !state.reading && (complete || !state.sending)) {
        buffers.give(state.buffer);
      }
    });
    // The budget before the read, so a queued request holds no piece in memory; and nothing
    // read for an asker that gave up meanwhile.
    await options.uploadLimit.take(length);
    if (request.raw.destroyed || reply.raw.destroyed) {
      onResult('aborted', 0);
      return reply;
    }
    const into = buffers.take(length);
    state.buffer = into;
    state.reading = true;
    const bytes = await source.readPiece(piece, into).finally(() => {
      state.reading = false;
    });
    if (state.closed) {
      buffers.give(into);
      onResult('aborted', 0);
      return reply;
    }
    if (bytes === undefined) {
      onResult('missing', 0);
      return reply.code(404).send({ error: 'piece not held' });
    }
    if (options.corrupt === true && bytes.length > 0) {
      bytes[0] = (bytes[0] ?? 0) ^ 0xff;
    }
    state.sending = true;
    onResult('served', bytes.length);
    return reply.header('content-type', 'application/octet-stream').send(bytes);
  };
}
