/**
 * Which piece sources every download of the agent leaves alone for now, and why: a bad piece
 * (a fixed time), or refused connections (doubling while they go on, cut back
 * once the tracker names the source again). Pure: the clock is injected, so the rules are
 * tested on a fake one.
 */

/** A source's refused connections in a row, and the penalty the last one set. */
interface Refusals {
  count: number;
  /** When the last refusal was (ms). */
  atMs: number;
  /** Its penalty's end (ms), and the shortest and longest such penalty. */
  untilMs: number;
  baseMs: number;
  maxMs: number;
}

/**
 * How long a source that refused connections (or went silent) is named as unreachable
 * (`unreachable`) after its last refusal, in ms, unless it answers meanwhile: a few of the seed's
 * rationing windows. A source still gone that the tracker keeps naming is refused again at each
 * probe, which renews it.
 */
const UNREACHABLE_MEMORY_MS = 15_000;

export class SourcePenalties {
  readonly #now: () => number;
  /** Until when each penalised source is left alone (ms). */
  readonly #until = new Map<string, number>();
  readonly #refusals = new Map<string, Refusals>();
  /**
   * Sources whose last connection was refused (or went silent) and that have not answered
   * since, with when that was (ms), oldest first. Kept apart from the refusals, which a
   * hand-out naming the source clears: the tracker naming it is no sign it is back.
   */
  readonly #unreachable = new Map<string, number>();
  /** Sources under a bad piece's penalty, with when it ends (ms), oldest first. */
  readonly #corrupting = new Map<string, number>();

  constructor(now: () => number = Date.now) {
    this.#now = now;
  }

  /**
   * Keeps a source out of every download for `ms` (a bad piece), or longer if a penalty it
   * has already ends later: a shorter one never cuts a longer one short.
   */
  penalize(peer: string, ms: number): void {
    const now = this.#now();
    this.#prune(now);
    const untilMs = Math.max(now + ms, this.#until.get(peer) ?? 0);
    this.#until.set(peer, untilMs);
    this.#corrupting.delete(peer);
    this.#corrupting.set(peer, untilMs);
  }

  /**
   * A source refused a connection (it stopped; the tracker may name it for a while yet): it
   * is left alone for `baseMs`, doubling with each refusal in a row up to `maxMs`, so a
   * source that stays gone costs a refused connection every few seconds rather than every
   * `baseMs`. Refusals while it is penalised already (requests started together, or a bad
   * piece's penalty) count once, and change nothing.
   */
  refused(peer: string, baseMs: number, maxMs: number): void {
    const now = this.#now();
    this.#unreachable.delete(peer);
    this.#unreachable.set(peer, now);
    if (this.#penalized(peer, now) !== undefined) {
      return;
    }
    this.#prune(now);
    const count = this.#refusals.get(peer)?.count ?? 0;
    const untilMs = now + Math.min(maxMs, baseMs * 2 ** count);
    this.#until.set(peer, untilMs);
    this.#refusals.set(peer, { count: count + 1, atMs: now, untilMs, baseMs, maxMs });
  }

  /** A source answered a piece request: its refused connections are forgotten. */
  answered(peer: string): void {
    this.#refusals.delete(peer);
    this.#unreachable.delete(peer);
  }

  /**
   * The sources that refused connections (or went silent) lately and have not answered since,
   * the latest first: whoever got a piece from them cannot pass it on to this agent.
   */
  unreachable(): string[] {
    this.#forgetUnreachable(this.#now());
    return [...this.#unreachable.keys()].reverse();
  }

  /**
   * The sources under a bad piece's penalty, the latest first: whoever got a piece from them
   * got it corrupted, as this agent would.
   */
  corrupting(): string[] {
    this.#forgetCorrupting(this.#now());
    return [...this.#corrupting.keys()].reverse();
  }

  /**
   * A hand-out named the source after it refused: it may be back (a seed server that
   * restarted is named as soon as it announces), so its refusals in a row are forgotten and its
   * penalty is cut back to `baseMs` after the last refusal: asked again soon, not after the
   * doubled penalty (up to 8 s more of a download stalling toward the origin). A source still
   * gone costs one refused connection per hand-out and `baseMs` at most.
   */
  handedOut(peer: string): void {
    const refusals = this.#refusals.get(peer);
    if (refusals === undefined) {
      return;
    }
    this.#refusals.delete(peer);
    if (this.#until.get(peer) !== refusals.untilMs) {
      return; // A penalty set since for another reason (a bad piece) stays.
    }
    const untilMs = Math.min(refusals.untilMs, refusals.atMs + refusals.baseMs);
    if (untilMs <= this.#now()) {
      this.#until.delete(peer);
    } else {
      this.#until.set(peer, untilMs);
    }
  }

  /** True while a source is penalised. */
  isPenalized(peer: string): boolean {
    return this.#penalized(peer, this.#now()) !== undefined;
  }

  /** When a source's penalty ends (ms), or undefined when it has none now. */
  penaltyEnds(peer: string): number | undefined {
    return this.#penalized(peer, this.#now());
  }

  /** Sources with a penalty or refusals remembered (bounded by the pruning; for tests). */
  get tracked(): number {
    return new Set([
      ...this.#until.keys(),
      ...this.#refusals.keys(),
      ...this.#unreachable.keys(),
      ...this.#corrupting.keys(),
    ]).size;
  }

  #penalized(peer: string, now: number): number | undefined {
    const until = this.#until.get(peer);
    if (until === undefined) {
      return undefined;
    }
    if (until < now) {
      this.#until.delete(peer);
      return undefined;
    }
    return until;
  }

  /**
   * Forgets penalties that ended, and refusals older than their source's longest penalty past
   * its end (the count decays: a source refused once an hour starts from `baseMs` each
   * time), so sources seen once do not stay in the maps for the agent's lifetime.
   */
  #prune(now: number): void {
    for (const [peer, until] of this.#until) {
      if (until < now) {
        this.#until.delete(peer);
      }
    }
    for (const [peer, refusals] of this.#refusals) {
      if (now > refusals.untilMs + refusals.maxMs) {
        this.#refusals.delete(peer);
      }
    }
    this.#forgetUnreachable(now);
    this.#forgetCorrupting(now);
  }

  /** Forgets the sources whose bad piece's penalty has ended. */
  #forgetCorrupting(now: number): void {
    for (const [peer, untilMs] of this.#corrupting) {
      if (untilMs < now) {
        this.#corrupting.delete(peer);
      }
    }
  }

  /** Forgets the sources last refused longer ago than `UNREACHABLE_MEMORY_MS`. */
  #forgetUnreachable(now: number): void {
    for (const [peer, atMs] of this.#unreachable) {
      if (now - atMs > UNREACHABLE_MEMORY_MS) {
        this.#unreachable.delete(peer);
      }
    }
  }
}
