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
  /** Its bytes start going out (after its turn, the budget and the read). */
  started?(): void;
  /**
   * How many requests for its piece were refused since it was handed out (while it waits
   * its turn, the piece's demand: see `SendTurns`).
   */
  demand?(): number;
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
    /**
     * Answers sent at once, when fewer than `max`: the others wait their turn, the piece with
     * the most refusals first (one that waited half of `turnMs` goes first), holding no piece
     * in memory meanwhile (see `SendTurns`).
     */
    readonly sending?: number;
    /**
     * With `sending`: the longest wait for a turn, in ms (then 429 `busy`, below an asker's
     * idle timeout), and the longest turn (an answer still going after it goes on outside
     * the count, so a slow or stalled receiver does not hold the line). Default 10 000.
     */
    readonly turnMs?: number;
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
  /**
   * A copy counted `served` that was cut off before the asker had all of it (it gave the
   * request up, or the connection broke or timed out). How much of it went out is not known
   * here: the whole piece is handed to the socket at once.
   */
  readonly onCut?: () => void;
  /**
   * Answers in flight (`uploads`), and of those the ones waiting their turn to send
   * (`waiting`), after every change.
   */
  readonly onInFlight?: (uploads: number, waiting: number) => void;
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

/** One request's place with `SendTurns`: `ready` once its turn came (or it left the line). */
interface SendTurn {
  readonly ready: Promise<void>;
  /** Gives the turn to the next in line, or leaves the line (`ready` then settles too). */
  release(): void;
}

/** One request waiting in `SendTurns`' line. */
interface Waiter {
  /** Gives it its turn (or lets it go, when it left the line). */
  readonly wake: () => void;
  /** How many refusals its piece drew while it waited (see `SendTurns.take`). */
  readonly demand: () => number;
  /** When it joined the line (ms, the line's clock). */
  readonly since: number;
}

/** A waiter's demand, 0 when it cannot say (a hook that throws must not stop the line). */
function demandOf(waiter: Waiter): number {
  try {
    const demand = waiter.demand();
    return Number.isFinite(demand) ? demand : 0;
  } catch {
    return 0;
  }
}

/**
 * Answers sent at once, the rest waiting in line. A link shared by every answer at once
 * delivers each of them late: at 32 at once on the seed's 25 Mbit/s link, a 1 MiB piece took
 * up to 30 s from its first byte to its last (a quarter of them over 21 s), its agent could
 * pass it on only then, and meanwhile the seed's fan-out stopped counting the copy, so other
 * agents got the piece again. Four at once, 1.7 s at the median, 3.3 s for nine in ten.
 *
 * The line is not first come first served alone: the next turn goes to the waiting answer
 * whose piece drew the most refusals (`demand`; the seed counts the requests it turned away
 * for that piece meanwhile), the earliest of those first. While a copy waits, every other
 * asker of its piece is sent to its peers, who can only get it once the copy has gone out:
 * with a first-come line of 28, the last pieces of a layer waited up to 10 s for one agent
 * while eleven others, refused them, sat idle until their downloads read as stalled and went
 * to the registry. A waiter nobody competes with is not passed over for ever: once the oldest
 * in line has waited `agedMs`, it goes first.
 */
export class SendTurns {
  #free: number;
  readonly #line: Waiter[] = [];
  readonly #agedMs: number;
  readonly #now: () => number;

  /**
   * `count` turns; `agedMs`: a wait after which the oldest waiter goes first whatever the
   * others' demand (default: never); `now`: the line's clock in ms.
   */
  constructor(
    count: number,
    agedMs = Number.POSITIVE_INFINITY,
    now: () => number = () => performance.now(),
  ) {
    this.#free = count;
    this.#agedMs = agedMs;
    this.#now = now;
  }

  /**
   * A place in line, or a turn at once when one is free. `demand`, asked when a turn frees:
   * how many refusals this answer's piece drew while it waited (default none).
   */
  take(demand: () => number = () => 0): SendTurn {
    let granted = this.#free > 0;
    let done = false;
    let waiter: Waiter | undefined;
    if (granted) {
      this.#free -= 1;
    }
    const ready = granted
      ? Promise.resolve()
      : new Promise<void>((resolve) => {
          waiter = {
            wake: () => {
              granted = true;
              resolve();
            },
            demand,
            since: this.#now(),
          };
          this.#line.push(waiter);
        });
    return {
      ready,
      release: () => {
        if (done) {
          return;
        }
        done = true;
        if (granted) {
          this.#pass();
          return;
        }
        // Left the line before its turn: out of it, and its `ready` settles so nothing hangs.
        if (waiter !== undefined) {
          this.#line.splice(this.#line.indexOf(waiter), 1);
          waiter.wake();
        }
      },
    };
  }

  /** Waiting now (for tests and metrics). */
  get waiting(): number {
    return this.#line.length;
  }

  #pass(): void {
    if (this.#line.length === 0) {
      this.#free += 1;
      return;
    }
    // The line is in arrival order: the oldest first once it has waited long enough, else
    // the most wanted piece, the earliest of equals.
    let best = 0;
    if (this.#now() - (this.#line[0]?.since ?? 0) < this.#agedMs) {
      let bestDemand = -1;
      this.#line.forEach((waiter, at) => {
        const demand = demandOf(waiter);
        if (demand > bestDemand) {
          best = at;
          bestDemand = demand;
        }
      });
    }
    const [next] = this.#line.splice(best, 1);
    next?.wake();
  }
}

/** `uploads.turnMs` unless set: below the agents' idle timeout (15 s) for a head. */
const DEFAULT_TURN_MS = 10_000;

/** Whether `turn` came within `ms` (false: the wait ran out; the caller leaves the line). */
async function inTurn(turn: SendTurn, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([turn.ready.then(() => true as const), late]);
  } finally {
    clearTimeout(timer);
  }
}

/** The handler for `PIECE_ROUTE`, with its upload slots. */
export function pieceHandler(
  options: PieceServerOptions,
): (request: PieceRequest, reply: FastifyReply) => Promise<FastifyReply> {
  const { buffers, uploads: limits, onResult } = options;
  const turnMs = limits.turnMs ?? DEFAULT_TURN_MS;
  // Half the longest wait: a request nobody competes with still gets its turn in time.
  const turns =
    limits.sending !== undefined && limits.sending < limits.max
      ? new SendTurns(limits.sending, turnMs / 2)
      : undefined;
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
    const turn = turns?.take(() => ticket?.demand?.() ?? 0);
    options.onInFlight?.(uploads, turns?.waiting ?? 0);
    // Changed by the close handler and the read, each seeing the other's changes.
    const state: {
      buffer: Buffer | undefined;
      reading: boolean;
      closed: boolean;
      sending: boolean;
      /** Its last byte was handed to the kernel, its connection still up (`finish`). */
      finished: boolean;
    } = { buffer: undefined, reading: false, closed: false, sending: false, finished: false };
    const deadline = setTimeout(() => {
      request.raw.socket.destroy();
    }, limits.timeoutMs);
    let lease: NodeJS.Timeout | undefined;
    // Not `writableFinished` at close, nor `finish` alone: a socket destroyed mid-answer drops
    // what it still held, and the answer then reads as finished all the same. Its socket,
    // destroyed by then, tells.
    const socket = request.raw.socket;
    reply.raw.once('finish', () => {
      state.finished = !socket.destroyed;
    });
    // Once, at the answer's close, or at its socket's: an answer queued behind others on a
    // pipelined connection that dies never closes itself.
    const done = (): void => {
      if (state.closed) {
        return;
      }
      socket.off('close', done);
      state.closed = true;
      clearTimeout(lease);
      const complete = state.sending && state.finished;
      // The copy counts as spread only when the asker got all of it.
      ticket?.end(complete);
      turn?.release();
      if (state.sending && !complete) {
        options.onCut?.();
      }
      clearTimeout(deadline);
      uploads -= 1;
      const left = (byPeer.get(peer) ?? 1) - 1;
      if (left > 0) {
        byPeer.set(peer, left);
      } else {
        byPeer.delete(peer);
      }
      options.onInFlight?.(uploads, turns?.waiting ?? 0);
      source.release();
      // Written out whole, or never handed to the socket: the buffer may serve the next piece.
      // Not after a cut response (the socket may still hold it), nor while a read into it is
      // still running (it goes back when that ends).
      if (state.buffer !== undefined && !state.reading && (complete || !state.sending)) {
        buffers.give(state.buffer);
      }
    };
    reply.raw.once('close', done);
    socket.once('close', done);
    // The turn and the budget before the read, so a queued request holds no piece in memory;
    // and nothing read for an asker that gave up meanwhile.
    const gone = (): boolean => state.closed || request.raw.destroyed || reply.raw.destroyed;
    if (turn !== undefined && !(await inTurn(turn, turnMs))) {
      turn.release();
      if (!gone()) {
        onResult('busy', 0);
        return reply.code(429).header('retry-after', '1').send({ error: 'busy' });
      }
    }
    if (!gone()) {
      await options.uploadLimit.take(length);
    }
    if (gone()) {
      done();
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
    if (turn !== undefined) {
      lease = setTimeout(() => turn.release(), turnMs);
    }
    ticket?.started?.();
    onResult('served', bytes.length);
    return reply.header('content-type', 'application/octet-stream').send(bytes);
  };
}
