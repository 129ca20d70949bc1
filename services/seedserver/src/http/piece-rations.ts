/**
 * The seed's fan-out rationing (BitTorrent's super-seeding): each piece goes to a few agents,
 * and the rest are sent to get it from those agents, so the seed's upload goes to pieces the
 * swarm does not have yet.
 *
 * A copy may wait its turn before it is sent (the seed sends a few answers at once): it counts
 * from its request on, and the times below (its hold, a starved asker's lateness) run from
 * when it starts going out, as its agent cannot pass on before that what it has not got.
 *
 * A copy counts while it is being sent and for a window after it was sent whole: the time for
 * the agent that got it to announce it and for the others to hear. Counting from the start of
 * the copy instead (as a fixed window did) let a second copy go out while the first was still
 * on a slow link, so the seed sent a piece twice exactly when its upload was scarcest.
 *
 * A copy still being sent after `holdMs` stops counting: the agent getting it is slow, and the
 * others should not wait for it.
 *
 * An asker is not refused for copies it cannot get the piece from: those that went to itself
 * (it asks again: it was restarted, or its request failed on its side) and those that went to
 * agents it names as ones it cannot get the piece from (it could not connect to them, they
 * went silent, or its request to them for this piece is late). Nor is an asker that says the
 * swarm does not hear it now (`unheard`): it could not learn who got the piece. The
 * copies still count for everyone else, so one agent's view never changes what the others
 * are told, and the copy it gets counts too. Without this, the pieces last sent to an agent
 * killed mid-pull were refused to everyone, its own restart included, for the whole window.
 *
 * Nor is an asker whose download starved (no piece came to it for its lateness with every
 * request it has in flight late, or for a second with none in flight) refused for copies
 * handed out longer ago than that lateness (`starvedLateMs`, taken as a second at least):
 * whoever got them has not passed them on in that time, a slow node still receiving them on
 * its own link or sending them out of it. Copies handed out since still count: the piece went
 * to an agent a moment ago, and the asker is sent to it as before.
 */
import { MIN_STARVED_LATE_MS } from '@shoal/proto';

export interface RationSettings {
  /** Copies of a piece counted at once (0: no rationing). */
  readonly copies: number;
  /** How long a copy sent whole keeps counting, in ms. */
  readonly windowMs: number;
  /** How long a copy being sent counts at most, in ms. */
  readonly holdMs: number;
}

/**
 * One copy of a piece: when (its start while being sent, its end once sent whole) and to whom.
 * A copy waiting its turn to be sent (`RationRequest.waits`) has not started: its times are
 * `Infinity` until `RationTicket.started`, so it counts in full meanwhile (no hold, no
 * starved asker's exemption: its agent cannot have passed on what it has not got).
 */
interface Copy {
  at: number;
  /** Who asked for it (the agent's id); '' when the request did not say. */
  readonly asker: string;
  /** When it started being sent (ms), also once it was sent whole. */
  handedAt: number;
}

interface PieceState {
  /** The copies being sent, oldest first. */
  readonly sending: Copy[];
  /** The copies sent whole recently, oldest first. */
  readonly sent: Copy[];
  /** Askers turned away for this piece since its entry was made. */
  refused: number;
}

/** How a copy is asked for (see `PieceRations.take`). */
export interface RationRequest {
  /**
   * False: a ticket whatever the count (the copy still counts), for when the agents cannot
   * hear who got the piece (see `RouteDeps.swarmHeard`). Default true.
   */
  readonly mayRefuse?: boolean;
  /** Who asks (the agent's id): its own copies of the piece do not count against it. */
  readonly asker?: string | undefined;
  /** Agents the asker cannot get the piece from: the copies they got do not count against it. */
  readonly notFrom?: readonly string[];
  /**
   * The swarm does not hear the asker now (`PIECE_UNHEARD_HEADER`): sent to another agent, it
   * could not learn which. A ticket whatever the count (the copy still counts for the others).
   */
  readonly unheard?: boolean;
  /**
   * The asker's download starved (`PIECE_STARVED_HEADER`), and this is its lateness in ms:
   * copies handed out longer ago than that do not count against it (they went to agents that
   * did not pass them on in that time).
   */
  readonly starvedLateMs?: number | undefined;
  /**
   * The copy waits its turn to be sent (the piece server sends a few at once): it starts at
   * `RationTicket.started`, not now. Default false.
   */
  readonly waits?: boolean;
}

/**
 * Why a copy went although the piece's count was full (see `PieceRations`): the copies
 * counted went to the asker itself, or to agents it cannot get the piece from, or the asker
 * cannot hear from the swarm who got them (`RationRequest.unheard`).
 */
export type ExemptReason = 'asked-again' | 'not-from' | 'unheard' | 'starved';

/** One copy handed out: call `end` once, when its response has closed. */
export interface RationTicket {
  /** Its bytes start going out (for a copy that waited its turn, `RationRequest.waits`). */
  started(): void;
  /**
   * Requests for its piece refused since it was handed out (one agent asking again counts
   * again): while it waits its turn, they wait for it too (the piece server sends the piece
   * with the most refusals first).
   */
  demand(): number;
  /** `complete`: the copy was sent whole (it counts for the window); false: it was cut off. */
  end(complete: boolean): void;
}

const NO_TICKET: RationTicket = {
  started: () => undefined,
  demand: () => 0,
  end: () => undefined,
};

/** No agent: every copy counts. */
const NOBODY: ReadonlySet<string> = new Set();

/** A request's exemptions, worked out once per request. */
interface Ask {
  /** The asker itself. */
  readonly own: ReadonlySet<string>;
  /** How many agents it names as ones it cannot get the piece from. */
  readonly notFrom: number;
  /** The asker and those agents. */
  readonly ownAndNotFrom: ReadonlySet<string>;
  readonly unheard: boolean;
  /** For a starved asker: copies handed out before then (ms) do not count against it. */
  readonly starvedSince: number | undefined;
}

function askOf(request: RationRequest, now: number): Ask {
  const asker = request.asker ?? '';
  const own = asker === '' ? NOBODY : new Set([asker]);
  const notFrom = new Set(request.notFrom ?? []);
  return {
    own,
    notFrom: notFrom.size,
    ownAndNotFrom: notFrom.size === 0 ? own : new Set([...own, ...notFrom]),
    unheard: request.unheard === true,
    starvedSince:
      request.starvedLateMs === undefined
        ? undefined
        : now - Math.max(request.starvedLateMs, MIN_STARVED_LATE_MS),
  };
}

/**
 * Copies of each piece counted now, per local copy of a blob (`take`'s `blob`: the object
 * the pieces are read from, so a blob evicted and seeded again is a new one, its earlier
 * copies not counted). Entries go once nothing about them counts any more: at the end of the
 * last copy being sent when none was sent whole, else at a sweep once the window of the copies
 * sent has passed (a piece nobody asks for again would otherwise stay forever).
 */
export class PieceRations {
  readonly #settings: RationSettings;
  readonly #now: () => number;
  /** By local copy of a blob, then by piece index. */
  readonly #blobs = new Map<object, Map<number, PieceState>>();
  #entries = 0;
  /** When the last sweep ran, in ms. */
  #sweptAt: number;
  readonly #onExempt: (reason: ExemptReason) => void;

  /** `onExempt`: told of each copy that went although the count was full, and why. */
  constructor(
    settings: RationSettings,
    now: () => number = Date.now,
    onExempt: (reason: ExemptReason) => void = () => undefined,
  ) {
    this.#settings = settings;
    this.#now = now;
    this.#sweptAt = now();
    this.#onExempt = onExempt;
  }

  /** A ticket when another copy of the piece may go out now; undefined: send the agent to a peer. */
  take(blob: object, piece: number, request: RationRequest = {}): RationTicket | undefined {
    const mayRefuse = request.mayRefuse ?? true;
    const asker = request.asker ?? '';
    const { copies } = this.#settings;
    if (copies === 0) {
      return NO_TICKET;
    }
    const now = this.#now();
    // At most one sweep per window (or when a burst left very many entries): the work is
    // spread over the takes, and the entries kept are those of the last two windows or so.
    if (now - this.#sweptAt >= this.#settings.windowMs || this.#entries > 100_000) {
      this.#sweep(now);
    }
    let pieces = this.#blobs.get(blob);
    if (pieces === undefined) {
      pieces = new Map();
      this.#blobs.set(blob, pieces);
    }
    let state = pieces.get(piece);
    if (state === undefined) {
      state = { sending: [], sent: [], refused: 0 };
      pieces.set(piece, state);
      this.#entries += 1;
    }
    // The request's exemptions are worked out only when the count is full.
    if (mayRefuse && this.#counted(state, now) >= copies) {
      const verdict = this.#verdict(state, now, askOf(request, now));
      if (verdict === 'refuse') {
        state.refused += 1;
        return undefined;
      }
      if (verdict !== 'free') {
        this.#onExempt(verdict);
      }
    }
    const start = request.waits === true ? Number.POSITIVE_INFINITY : now;
    const copy: Copy = { at: start, asker, handedAt: start };
    state.sending.push(copy);
    const entry = state;
    const refusedBefore = state.refused;
    let ended = false;
    return {
      started: () => {
        if (copy.at === Number.POSITIVE_INFINITY) {
          copy.at = copy.handedAt = this.#now();
        }
      },
      demand: () => entry.refused - refusedBefore,
      end: (complete) => {
        if (ended) {
          return;
        }
        ended = true;
        const at = entry.sending.indexOf(copy);
        if (at >= 0) {
          entry.sending.splice(at, 1);
        }
        if (complete) {
          const end = this.#now();
          entry.sent.push({ at: end, asker, handedAt: Math.min(copy.handedAt, end) });
        }
        if (entry.sending.length === 0 && entry.sent.length === 0) {
          this.#forget(blob, piece, entry);
        }
      },
    };
  }

  /**
   * The pieces of `blob` (as `take` names it) that `take` would refuse this asker now, as it
   * asks (`request`: its exemptions hold), ascending. Told with a refusal
   * (`PIECE_RATIONED_HEADER`), so that the asker leaves them all to its peers for a moment.
   */
  refusedNow(blob: object, request: RationRequest = {}): number[] {
    const pieces = this.#blobs.get(blob);
    if (this.#settings.copies === 0 || pieces === undefined || request.mayRefuse === false) {
      return [];
    }
    const now = this.#now();
    const ask = askOf(request, now);
    const refused: number[] = [];
    for (const [piece, state] of pieces) {
      if (this.#verdict(state, now, ask) === 'refuse') {
        refused.push(piece);
      } else if (state.sending.length === 0 && state.sent.length === 0) {
        // Its copies' window passed while looking: nothing about it counts any more.
        this.#forget(blob, piece, state);
      }
    }
    return refused.sort((a, b) => a - b);
  }

  /**
   * Whether another copy of a piece (`state`) may go to this asker now: `free` (the count is
   * not full), the reason it may although the count is full (the copies counted are ones it
   * cannot get the piece from, or it cannot hear who got them), or `refuse`.
   */
  #verdict(state: PieceState, now: number, ask: Ask): 'free' | ExemptReason | 'refuse' {
    const { copies } = this.#settings;
    if (this.#counted(state, now) < copies) {
      return 'free';
    }
    if (this.#counted(state, now, ask.own) < copies) {
      return 'asked-again';
    }
    if (ask.notFrom > 0 && this.#counted(state, now, ask.ownAndNotFrom) < copies) {
      return 'not-from';
    }
    if (ask.unheard) {
      return 'unheard';
    }
    if (
      ask.starvedSince !== undefined &&
      this.#counted(state, now, ask.ownAndNotFrom, ask.starvedSince) < copies
    ) {
      return 'starved';
    }
    return 'refuse';
  }

  /** Pieces with an entry (for tests: memory follows the pieces served recently). */
  get size(): number {
    return this.#entries;
  }

  /**
   * Copies that count now, those that went to `except` left out, and with `since` those
   * handed out before then (ms); drops sent copies whose window has passed.
   */
  #counted(
    state: PieceState,
    now: number,
    except: ReadonlySet<string> = NOBODY,
    since = -Infinity,
  ): number {
    const { windowMs, holdMs } = this.#settings;
    while (state.sent.length > 0 && now - (state.sent[0]?.at ?? now) >= windowMs) {
      state.sent.shift();
    }
    let counted = 0;
    for (const copy of state.sending) {
      if (now - copy.at < holdMs && copy.handedAt >= since && !except.has(copy.asker)) {
        counted += 1;
      }
    }
    for (const copy of state.sent) {
      if (copy.handedAt >= since && !except.has(copy.asker)) {
        counted += 1;
      }
    }
    return counted;
  }

  #sweep(now: number): void {
    this.#sweptAt = now;
    for (const [blob, pieces] of this.#blobs) {
      for (const [piece, state] of pieces) {
        if (this.#counted(state, now) === 0 && state.sending.length === 0) {
          this.#forget(blob, piece, state);
        }
      }
    }
  }

  /** Drops a piece's entry (`state`, not one made since), and the blob's once it has none. */
  #forget(blob: object, piece: number, state: PieceState): void {
    const pieces = this.#blobs.get(blob);
    if (pieces?.get(piece) === state && pieces.delete(piece)) {
      this.#entries -= 1;
      if (pieces.size === 0) {
        this.#blobs.delete(blob);
      }
    }
  }
}
