/**
 * When a piece source has vanished: a peer or seed server powered off, cut off by a partition
 * or a firewall change, drops packets without a word (no RST, no FIN), so its connections
 * neither fail nor end; only silence tells. The idle timeout per connection is long (15 s by
 * default) because one connection of a slow, shared link may wait its turn for seconds; the
 * source as a whole, though, sends something on one connection or another every few
 * hundredths of a second while it has our requests. So silence is judged per source, against
 * the source's own pace: once none of its connections has brought a byte for `factor` times
 * its recent gap between reads (never less than `minMs`, never more than `maxMs`), every
 * request to it is given up at once, and the caller leaves it alone for a while.
 *
 * Silence counts only while the source is answering one of our requests (its head came) and
 * we are reading. A source may hold an answer's head back for long on purpose (a piece server
 * takes its upload budget for the whole piece before the head, and queues for it), so requests
 * that wait for their head alone are left to the idle timeout: a source that vanished between
 * two pieces, its kept-alive connections all waiting, costs that (a new connection to it, the
 * connect timeout). A request whose sink is busy (a disk write, our own back-pressure) holds
 * the clock, as the quiet is ours. Once the source is given up, every request to it is, those
 * still waiting for their head too. Time comes from `now` (ms),
 * and looking is one timer per source with requests, a few times per floor, never per byte.
 */

export interface SilenceSettings {
  /** Shortest silence that gives a source up, in ms; 0: never (the idle timeout alone). */
  readonly minMs: number;
  /** Longest silence judged here, in ms (the idle timeout, which catches the rest). */
  readonly maxMs: number;
  /** How many of the source's recent gaps between reads a silence must last. */
  readonly factor: number;
}

/** One request's part in its source's silence. */
export interface SilenceHandle {
  /** Bytes arrived from the source (the answer's head, a socket read of its body). */
  read(): void;
  /** The request's sink started (true) or finished (false) work that pauses its reading. */
  busy(on: boolean): void;
  /** The request ended: it no longer waits on the source. */
  close(): void;
}

/** Weight of the newest gap in the recent gap (an exponentially weighted mean). */
const GAP_WEIGHT = 1 / 8;
/** Looks per floor: a silence is noticed within a quarter of the floor past its limit. */
const LOOKS_PER_FLOOR = 4;

interface Request {
  readonly giveUp: (silentMs: number) => void;
  /** Pending work of the request's sink that pauses its reading. */
  busy: number;
  /** Whether the source has started answering (bytes came). */
  answering: boolean;
}

/** Sources remembered (with their pace) while they have no requests, at most. */
const MAX_IDLE_SOURCES = 1024;

interface Source {
  readonly requests: Set<Request>;
  /** The last read from the source, or when it got requests after having none (ms). */
  lastMs: number;
  /** Recent gap between reads, in ms; undefined until a second read. */
  gapMs: number | undefined;
  /** Whether a read happened since the source got requests (a gap needs two ends). */
  reading: boolean;
  timer: NodeJS.Timeout | undefined;
}

export class SourceSilence {
  readonly #settings: SilenceSettings;
  readonly #now: () => number;
  readonly #sources = new Map<string, Source>();

  constructor(settings: SilenceSettings, now: () => number = Date.now) {
    this.#settings = settings;
    this.#now = now;
  }

  /** The silence after which `source` is given up now, in ms (Infinity: never). */
  limitMs(source: string): number {
    const { minMs, maxMs, factor } = this.#settings;
    if (minMs <= 0) {
      return Number.POSITIVE_INFINITY;
    }
    const gap = this.#sources.get(source)?.gapMs ?? 0;
    return Math.min(maxMs, Math.max(minMs, factor * gap));
  }

  /**
   * A request to `source` starts; `giveUp` is called (once) with the silence in ms if the
   * source goes quiet while it runs.
   */
  open(source: string, giveUp: (silentMs: number) => void): SilenceHandle {
    const request: Request = { giveUp, busy: 0, answering: false };
    let state = this.#sources.get(source);
    if (state === undefined) {
      if (this.#sources.size >= MAX_IDLE_SOURCES) {
        this.#forgetIdle();
      }
      state = {
        requests: new Set(),
        lastMs: this.#now(),
        gapMs: undefined,
        reading: false,
        timer: undefined,
      };
      this.#sources.set(source, state);
    }
    if (state.requests.size === 0) {
      // Quiet while nothing was asked is no silence: the clock starts with this request.
      state.lastMs = this.#now();
      state.reading = false;
      this.#watch(source, state);
    }
    state.requests.add(request);
    const current = state;
    let closed = false;
    return {
      read: () => {
        const now = this.#now();
        if (current.reading) {
          const gap = now - current.lastMs;
          current.gapMs =
            current.gapMs === undefined ? gap : current.gapMs + (gap - current.gapMs) * GAP_WEIGHT;
        }
        current.reading = true;
        current.lastMs = now;
        request.answering = true;
      },
      busy: (on) => {
        request.busy += on ? 1 : -1;
        if (!on) {
          // The pause was ours: the source's silence counts from now.
          current.lastMs = Math.max(current.lastMs, this.#now());
        }
      },
      close: () => {
        if (closed) {
          return;
        }
        closed = true;
        current.requests.delete(request);
        if (current.requests.size === 0) {
          clearTimeout(current.timer);
          current.timer = undefined;
        }
      },
    };
  }

  /** Drops the sources that have no requests now (their pace is learnt again). */
  #forgetIdle(): void {
    for (const [source, state] of this.#sources) {
      if (state.requests.size === 0) {
        this.#sources.delete(source);
      }
    }
  }

  /** Looks at `state` a few times per floor while it has requests. */
  #watch(source: string, state: Source): void {
    const { minMs } = this.#settings;
    if (minMs <= 0 || state.timer !== undefined) {
      return;
    }
    const lookMs = Math.max(1, Math.ceil(minMs / LOOKS_PER_FLOOR));
    // When this look is due on the process's own clock (not `now`, which tests move).
    let dueMs = performance.now() + lookMs;
    const arm = (): void => {
      dueMs = performance.now() + lookMs;
      state.timer = setTimeout(look, lookMs);
      state.timer.unref();
    };
    const look = (): void => {
      state.timer = undefined;
      if (state.requests.size === 0) {
        return;
      }
      const now = this.#now();
      const requests = [...state.requests];
      // A look a whole look late: this process was blocked (a long collection, a busy loop),
      // and the bytes that came meanwhile wait unread in the socket, behind this timer.
      const late = performance.now() - dueMs > lookMs;
      if (late || !requests.some((r) => r.answering) || requests.some((r) => r.busy > 0)) {
        // Nothing is being answered (heads may be held back on purpose: a piece server takes
        // its upload budget for the whole piece before the head, and may queue for it for
        // tens of seconds), or we are the ones not reading: no silence of the source's.
        state.lastMs = now;
      }
      const silent = now - state.lastMs;
      if (silent > this.limitMs(source)) {
        state.requests.clear();
        // The next request starts a fresh clock; the pace learnt before stays.
        for (const request of requests) {
          request.giveUp(silent);
        }
        return;
      }
      arm();
    };
    arm();
  }
}
