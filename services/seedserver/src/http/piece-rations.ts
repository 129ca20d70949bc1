/**
 * The seed's fan-out rationing (BitTorrent's super-seeding): each piece goes to a few agents,
 * and the rest are sent to get it from those agents, so the seed's upload goes to pieces the
 * swarm does not have yet.
 *
 * A copy counts while it is being sent and for a window after it was sent whole: the time for
 * the agent that got it to announce it and for the others to hear. Counting from the start of
 * the copy instead (as a fixed window did) let a second copy go out while the first was still
 * on a slow link, so the seed sent a piece twice exactly when its upload was scarcest.
 *
 * A copy still being sent after `holdMs` stops counting: the agent getting it is slow, and the
 * others should not wait for it.
 */

export interface RationSettings {
  /** Copies of a piece counted at once (0: no rationing). */
  readonly copies: number;
  /** How long a copy sent whole keeps counting, in ms. */
  readonly windowMs: number;
  /** How long a copy being sent counts at most, in ms. */
  readonly holdMs: number;
}

interface PieceState {
  /** Start times of the copies being sent, in ms. */
  readonly sending: number[];
  /** End times of the copies sent whole recently, in ms. */
  readonly sent: number[];
}

/** One copy handed out: call `end` once, when its response has closed. */
export interface RationTicket {
  /** `complete`: the copy was sent whole (it counts for the window); false: it was cut off. */
  end(complete: boolean): void;
}

const NO_TICKET: RationTicket = { end: () => undefined };

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

  constructor(settings: RationSettings, now: () => number = Date.now) {
    this.#settings = settings;
    this.#now = now;
    this.#sweptAt = now();
  }

  /**
   * A ticket when another copy of the piece may go out now; undefined: send the agent to a
   * peer. `mayRefuse` false: a ticket whatever the count (the copy still counts), for when
   * the agents cannot hear who got the piece (see `RouteDeps.swarmHeard`).
   */
  take(blob: object, piece: number, mayRefuse = true): RationTicket | undefined {
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
      state = { sending: [], sent: [] };
      pieces.set(piece, state);
      this.#entries += 1;
    }
    if (mayRefuse && this.#counted(state, now) >= copies) {
      return undefined;
    }
    const started = now;
    state.sending.push(started);
    const entry = state;
    let ended = false;
    return {
      end: (complete) => {
        if (ended) {
          return;
        }
        ended = true;
        const at = entry.sending.indexOf(started);
        if (at >= 0) {
          entry.sending.splice(at, 1);
        }
        if (complete) {
          entry.sent.push(this.#now());
        }
        if (entry.sending.length === 0 && entry.sent.length === 0) {
          this.#forget(blob, piece, entry);
        }
      },
    };
  }

  /** Pieces with an entry (for tests: memory follows the pieces served recently). */
  get size(): number {
    return this.#entries;
  }

  /** Copies that count now; drops sent copies whose window has passed. */
  #counted(state: PieceState, now: number): number {
    const { windowMs, holdMs } = this.#settings;
    while (state.sent.length > 0 && now - (state.sent[0] ?? now) >= windowMs) {
      state.sent.shift();
    }
    return state.sending.filter((started) => now - started < holdMs).length + state.sent.length;
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
