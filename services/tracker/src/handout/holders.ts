/**
 * The holders of one blob, kept so that a hand-out looks at O(limit) of them, not the whole
 * swarm. Members sit in rings by zone and by kind (complete, partial; seeds apart), and each
 * ring has a cursor that moves past the members it showed: consecutive askers see different
 * holders, so load spreads over the whole swarm without ranking all of it for every want.
 * Pure: no clock, no I/O; the caller says which members still count.
 */
import type { HandoutAsk, SwarmMember } from './policy.js';
import { bitmapOf, holdsMissingFrom, wordsHoldMissing } from './pieces.js';

/** Members visited per ring for each candidate wanted, at most; bounds the work of a want. */
const SCAN_FACTOR = 4;

/** Where a member is kept: a ring of its zone (complete or partial), or the seeds' ring. */
type Kind = 'seed' | 'complete' | 'partial';

/**
 * Widest bitmap kept side by side, in 32-bit words: 2,048 pieces, a blob of 32 GiB in 16 MiB
 * pieces. A wider set is compared as before (its own bitmap or its ranges), so one member
 * announcing a set that reaches far cannot make every slot of its ring that wide.
 */
const COLUMN_MAX_WORDS = 64;

/**
 * Members a ring of partial members holds before it keeps their bitmaps side by side, and
 * below which it lets them go (half as many, so a ring at the edge does not make and drop
 * them in turn): a smaller ring is visited whole anyway, and most blobs have a handful of
 * holders in a zone, for which the arrays would cost more memory than they save time.
 */
const COLUMNS_FROM = 16;
const COLUMNS_UNTIL = COLUMNS_FROM / 2;

/**
 * The piece bitmaps of a ring's members side by side, one slot per place in the ring: a want's
 * sample tests a hundred members or more, most of them (late in a download) holding nothing
 * the asker lacks, and reading each member's own bitmap costs a few cache misses per member
 * in a large heap (the member, its bitmap, the bitmap's words). Here a test reads one run of
 * words. A slot without a bitmap here (none, or wider than `COLUMN_MAX_WORDS`) says so, and
 * the caller compares the member itself.
 */
class BitColumns {
  /** Slot `s`'s bitmap is `#words[s * #stride, (s + 1) * #stride)`, zero-padded. */
  #words = new Uint32Array(0);
  #stride = 0;
  /** 1 where the slot's bitmap is held. */
  #known = new Uint8Array(0);

  /**
   * Holds `bits` for `slot`; with none, or one wider than `COLUMN_MAX_WORDS`, the slot says so
   * and the caller compares the member itself.
   */
  put(slot: number, bits: Uint32Array | undefined): void {
    const kept = bits !== undefined && bits.length <= COLUMN_MAX_WORDS ? bits : undefined;
    this.#fit(slot + 1, kept?.length ?? 0);
    const base = slot * this.#stride;
    this.#words.fill(0, base, base + this.#stride);
    if (kept === undefined) {
      this.#known[slot] = 0;
      return;
    }
    this.#words.set(kept, base);
    this.#known[slot] = 1;
  }

  /** Gives back room when the ring holds `slots` members, a quarter of it or less. */
  shrink(slots: number): void {
    const capacity = this.#known.length;
    if (slots > capacity / 4) {
      return;
    }
    const nextCapacity = Math.max(COLUMNS_FROM, Math.ceil(capacity / 2));
    if (nextCapacity < capacity) {
      this.#words = this.#words.slice(0, nextCapacity * this.#stride);
      this.#known = this.#known.slice(0, nextCapacity);
    }
  }

  /** Slot `to` takes what slot `from` holds (the ring moved its last member there). */
  move(from: number, to: number): void {
    const stride = this.#stride;
    this.#words.copyWithin(to * stride, from * stride, (from + 1) * stride);
    this.#known[to] = this.#known[from] ?? 0;
  }

  /**
   * Whether the slot's member holds a piece missing from `have` (a bitmap): undefined when
   * the slot holds no bitmap.
   */
  holdsMissing(slot: number, have: Uint32Array): boolean | undefined {
    if (this.#known[slot] !== 1) {
      return undefined;
    }
    return wordsHoldMissing(this.#words, slot * this.#stride, this.#stride, have);
  }

  /** Makes room for `slots` slots of at least `words` words each. */
  #fit(slots: number, words: number): void {
    const capacity = this.#known.length;
    if (slots <= capacity && words <= this.#stride) {
      return;
    }
    const nextCapacity = slots <= capacity ? capacity : Math.max(COLUMNS_FROM, capacity * 2, slots);
    const nextStride = Math.max(this.#stride, words);
    const next = new Uint32Array(nextCapacity * nextStride);
    for (let slot = 0; slot < capacity; slot += 1) {
      const from = slot * this.#stride;
      next.set(this.#words.subarray(from, from + this.#stride), slot * nextStride);
    }
    const known = new Uint8Array(nextCapacity);
    known.set(this.#known);
    this.#words = next;
    this.#stride = nextStride;
    this.#known = known;
  }
}

/**
 * A rotating list: O(1) add, replace and remove (a removed member's place is taken by the
 * last one), and a cursor that every visit moves forward. A ring of partial members also keeps
 * their bitmaps side by side (`bits`) while it holds `COLUMNS_FROM` of them or more.
 */
class Ring<M extends SwarmMember> {
  readonly #items: M[] = [];
  readonly #ids: string[] = [];
  readonly #index = new Map<string, number>();
  #cursor = 0;
  readonly #partial: boolean;
  #bits: BitColumns | undefined;

  /** `partial`: a ring of partial members, which keeps their bitmaps side by side. */
  constructor(partial = false) {
    this.#partial = partial;
  }

  /** The members' bitmaps by slot, when the ring keeps them (see `COLUMNS_FROM`). */
  get bits(): BitColumns | undefined {
    return this.#bits;
  }

  get size(): number {
    return this.#items.length;
  }

  /** Adds `member` under `id`, or replaces the member held under it in place. */
  set(id: string, member: M): void {
    let at = this.#index.get(id);
    if (at !== undefined) {
      this.#items[at] = member;
    } else {
      at = this.#items.length;
      this.#index.set(id, at);
      this.#items.push(member);
      this.#ids.push(id);
    }
    if (this.#bits !== undefined) {
      this.#bits.put(at, bitmapFor(member));
    } else if (this.#partial && this.#items.length >= COLUMNS_FROM) {
      const bits = new BitColumns();
      this.#items.forEach((held, slot) => {
        bits.put(slot, bitmapFor(held));
      });
      this.#bits = bits;
    }
  }

  /** The member held under `id`, if any. */
  get(id: string): M | undefined {
    const at = this.#index.get(id);
    return at === undefined ? undefined : this.#items[at];
  }

  delete(id: string): void {
    const at = this.#index.get(id);
    if (at === undefined) {
      return;
    }
    this.#index.delete(id);
    const lastItem = this.#items.pop();
    const lastId = this.#ids.pop();
    if (at < this.#items.length && lastItem !== undefined && lastId !== undefined) {
      this.#items[at] = lastItem;
      this.#ids[at] = lastId;
      this.#index.set(lastId, at);
      this.#bits?.move(this.#items.length, at);
    }
    if (this.#items.length < COLUMNS_UNTIL) {
      this.#bits = undefined;
    } else {
      this.#bits?.shrink(this.#items.length);
    }
    if (this.#cursor >= this.#items.length) {
      this.#cursor = 0;
    }
  }

  /**
   * Calls `visit` on members from the cursor on, at most `max` of them and never one twice,
   * until it returns false; the cursor moves past every member visited. `visit` gets the
   * member's slot too (see `bits`).
   */
  visit(max: number, visit: (member: M, slot: number) => boolean): void {
    const count = Math.min(max, this.#items.length);
    for (let k = 0; k < count; k += 1) {
      const slot = this.#cursor;
      const member = this.#items[slot];
      this.#cursor = slot + 1 === this.#items.length ? 0 : slot + 1;
      if (member !== undefined && !visit(member, slot)) {
        return;
      }
    }
  }
}

/** The bitmap kept with a member (the swarm view makes one per have), else its set's own. */
function bitmapFor(member: SwarmMember): Uint32Array | undefined {
  return member.bits ?? bitmapOf(member.pieces);
}

interface ZoneRings<M extends SwarmMember> {
  readonly complete: Ring<M>;
  readonly partial: Ring<M>;
}

/** What `sample` found. */
export interface Sample<M> {
  /**
   * Members that can help the asker: never the asker, never one that does not count any more,
   * never a partial member holding nothing the asker lacks. Includes someone who can finish
   * the blob (complete, or a seed) whenever the blob has one besides the asker.
   */
  readonly members: M[];
  /** True when `members` includes someone who can finish the blob (complete, or a seed). */
  readonly finisher: boolean;
  /**
   * Members found not to count any more (expired), for the caller to remove: those read on the
   * way, not the partial members passed over unread for holding nothing the asker lacks.
   */
  readonly dead: M[];
}

/**
 * The holders of one blob. `M` is the caller's member type (the swarm view's entries), so a
 * sample hands back the caller's own objects.
 */
export class BlobHolders<M extends SwarmMember> {
  /** Zone ('' for none) -> its rings; zones are few, so walking them all is cheap. */
  readonly #zones = new Map<string, ZoneRings<M>>();
  readonly #seeds = new Ring<M>();
  /** Where each member is, so an update that changes its zone or kind moves it. */
  readonly #placed = new Map<string, { zone: string; kind: Kind }>();
  /** Rotates the order in which other zones are visited, as rings rotate their members. */
  #zoneCursor = 0;

  /** Members held. */
  get size(): number {
    return this.#placed.size;
  }

  /** Adds a member, or replaces it (moving it when its zone or kind changed). */
  set(member: M): void {
    const id = member.peer.id;
    const zone = member.peer.zone ?? '';
    const kind: Kind = member.seed ? 'seed' : member.complete ? 'complete' : 'partial';
    const placed = this.#placed.get(id);
    if (placed !== undefined && (placed.zone !== zone || placed.kind !== kind)) {
      this.#ringOf(placed.zone, placed.kind)?.delete(id);
    }
    this.#placed.set(id, { zone, kind });
    let ring = this.#ringOf(zone, kind);
    if (ring === undefined) {
      const rings: ZoneRings<M> = { complete: new Ring(), partial: new Ring(true) };
      this.#zones.set(zone, rings);
      ring = rings[kind === 'complete' ? 'complete' : 'partial'];
    }
    ring.set(id, member);
  }

  delete(peerId: string): void {
    const placed = this.#placed.get(peerId);
    if (placed === undefined) {
      return;
    }
    this.#placed.delete(peerId);
    this.#ringOf(placed.zone, placed.kind)?.delete(peerId);
    const rings = this.#zones.get(placed.zone);
    if (rings !== undefined && rings.complete.size === 0 && rings.partial.size === 0) {
      this.#zones.delete(placed.zone);
    }
  }

  /**
   * Up to about `window` non-seed members that can help `ask` (and up to `window` seeds),
   * visiting at most `SCAN_FACTOR * window` members per ring: the asker's zone first (its
   * members rank first), other zones only while the window is not full. Complete and partial
   * members are both taken, so uploads fall on partial holders too, as in any swarm.
   */
  sample(
    ask: Pick<HandoutAsk, 'peer' | 'have'>,
    window: number,
    counts: (member: M) => boolean,
  ): Sample<M> {
    const members: M[] = [];
    const dead: M[] = [];
    const askerId = ask.peer.id;
    // The asker's own entry (none when it holds nothing yet), passed over by identity:
    // members are visited by the hundred per want, and comparing ids reads two more objects
    // each time.
    const asker = this.#member(askerId);
    const lacks = holdsMissingFrom(ask.have);
    const haveBits = bitmapOf(ask.have);
    const consider = (member: M): boolean => {
      if (member === asker) {
        return false;
      }
      if (!counts(member)) {
        dead.push(member);
        return false;
      }
      return true;
    };
    const budget = SCAN_FACTOR * window;
    for (const rings of this.#zoneOrder(ask.peer.zone)) {
      let complete = 0;
      rings.complete.visit(budget, (member) => {
        if (consider(member)) {
          members.push(member);
          complete += 1;
        }
        return complete < window;
      });
      let partial = 0;
      const bits = rings.partial.bits;
      rings.partial.visit(budget, (member, slot) => {
        // The side-by-side bitmap first: most members visited late in a download hold
        // nothing the asker lacks, and are passed over without reading them.
        const useful = haveBits === undefined ? undefined : bits?.holdsMissing(slot, haveBits);
        if (useful === false) {
          return true;
        }
        if (consider(member) && (useful ?? lacks(member.pieces, member.bits))) {
          members.push(member);
          partial += 1;
        }
        return partial < window;
      });
      if (members.length >= window) {
        break;
      }
    }
    let seeds = 0;
    this.#seeds.visit(budget, (member) => {
      if (consider(member)) {
        members.push(member);
        seeds += 1;
      }
      return seeds < window;
    });
    if (members.some((m) => m.complete || m.seed)) {
      return { members, finisher: true, dead };
    }
    // The window filled before reaching a zone with a complete member: the policy keeps a
    // place for someone who can finish the blob, so one is looked up.
    const found = this.#findFinisher(askerId, counts, dead);
    if (found !== undefined) {
      members.push(found);
    }
    return { members, finisher: found !== undefined, dead };
  }

  #findFinisher(askerId: string, counts: (member: M) => boolean, dead: M[]): M | undefined {
    let found: M | undefined;
    const look = (member: M): boolean => {
      if (member.peer.id === askerId) {
        return true;
      }
      if (!counts(member)) {
        dead.push(member);
        return true;
      }
      found = member;
      return false;
    };
    // Every ring is visited whole at most once: dead members are removed by the caller, so a
    // later look does not pay for them again.
    this.#seeds.visit(this.#seeds.size, look);
    for (const rings of this.#zones.values()) {
      if (found !== undefined) {
        break;
      }
      rings.complete.visit(rings.complete.size, look);
    }
    return found;
  }

  /** The asker's zone first, then the others from a rotating start. */
  *#zoneOrder(zone: string | undefined): Generator<ZoneRings<M>> {
    const own = zone === undefined ? undefined : this.#zones.get(zone);
    if (own !== undefined) {
      yield own;
    }
    const others = [...this.#zones.entries()].filter(([name]) => name !== zone);
    if (others.length === 0) {
      return;
    }
    this.#zoneCursor = (this.#zoneCursor + 1) % others.length;
    for (let k = 0; k < others.length; k += 1) {
      const entry = others[(this.#zoneCursor + k) % others.length];
      if (entry !== undefined) {
        yield entry[1];
      }
    }
  }

  /** The member held under `id`, if any. */
  #member(id: string): M | undefined {
    const placed = this.#placed.get(id);
    return placed === undefined ? undefined : this.#ringOf(placed.zone, placed.kind)?.get(id);
  }

  #ringOf(zone: string, kind: Kind): Ring<M> | undefined {
    if (kind === 'seed') {
      return this.#seeds;
    }
    return this.#zones.get(zone)?.[kind];
  }
}
