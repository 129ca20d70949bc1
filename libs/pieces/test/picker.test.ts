import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import {
  busyBackoff,
  endgameLate,
  nextTypicalMs,
  orderPieces,
  PiecePicker,
  windowCap,
  windowEnd,
  type PickedRequest,
  type PickerSettings,
  type PieceCandidate,
} from '../src/picker.js';

const MiB = 1024 * 1024;

const SETTINGS: PickerSettings = {
  concurrency: 4,
  heldBytes: 64 * MiB,
  perSource: 4,
  perSeed: 2,
  endgameCopies: 2,
  endgameLateFactor: 2,
  endgameLateMinMs: 1000,
  maxFailures: 3,
  busyBackoffMs: 1000,
  seedDeferMs: 750,
};

/** A picker on a fake clock, with `count` pieces of 1 MiB, every hash known. */
function picker(
  count: number,
  settings: Partial<PickerSettings> = {},
  random?: () => number,
): { picker: PiecePicker; clock: { ms: number } } {
  const clock = { ms: 1_000_000 };
  // Ties broken in a fixed order, so the tests see one order.
  let draws = 0;
  const picker = new PiecePicker({
    settings: { ...SETTINGS, ...settings },
    now: () => clock.ms,
    random: random ?? (() => (draws++ % 97) / 97),
  });
  picker.setLayout(count, MiB);
  picker.hashesKnown(0, count);
  return { picker, clock };
}

function indexes(requests: readonly PickedRequest[]): number[] {
  return requests.map((r) => r.index);
}

describe('piece order', () => {
  it('reaches as far past the prefix as the held budget holds, and at least the concurrency', () => {
    assert.equal(windowEnd(10, MiB, 8 * MiB, 8), 18);
    assert.equal(windowEnd(10, 256 * 1024, 8 * MiB, 8), 42);
    assert.equal(windowEnd(0, 16 * MiB, 8 * MiB, 8), 8);
  });

  it('asks for pieces in the window first, then the rest, rarest first within each', () => {
    const candidates: PieceCandidate[] = [
      { index: 40, holders: 1, rank: 0.1 },
      { index: 3, holders: 3, rank: 0.2 },
      { index: 5, holders: 1, rank: 0.9 },
      { index: 12, holders: 2, rank: 0.5 },
      { index: 30, holders: 3, rank: 0.3 },
      { index: 4, holders: 2, rank: 0.4 },
    ];
    assert.deepEqual(
      orderPieces(candidates, 18).map((c) => c.index),
      [5, 4, 12, 3, 40, 30],
    );
  });

  it("breaks ties with the agent's own rank, not the index, so agents spread over the pieces", () => {
    const candidates: PieceCandidate[] = [
      { index: 0, holders: 1, rank: 0.7 },
      { index: 1, holders: 1, rank: 0.2 },
      { index: 2, holders: 1, rank: 0.5 },
    ];
    assert.deepEqual(
      orderPieces(candidates, 8).map((c) => c.index),
      [1, 2, 0],
    );
  });

  it('orders a piece asked for anywhere as if it were in the window', () => {
    const candidates: PieceCandidate[] = [
      { index: 3, holders: 2, rank: 0.1 },
      { index: 40, holders: 1, rank: 0.2, anywhere: true },
      { index: 5, holders: 1, rank: 0.9, anywhere: true },
      { index: 30, holders: 1, rank: 0.3 },
    ];
    assert.deepEqual(
      orderPieces(candidates, 18).map((c) => c.index),
      [40, 5, 3, 30],
    );
  });
});

describe('endgame timing', () => {
  it('asks a second peer only for a piece late against the typical piece time', () => {
    // Pieces typically take 8 s on this link: a request 10 s old is on time, 16 s is late.
    assert.equal(endgameLate(0, 10_000, 8_000, 2, 1_000), false);
    assert.equal(endgameLate(0, 15_999, 8_000, 2, 1_000), false);
    assert.equal(endgameLate(0, 16_000, 8_000, 2, 1_000), true);
    // Fast pieces: never before the minimum.
    assert.equal(endgameLate(0, 999, 20, 2, 1_000), false);
    assert.equal(endgameLate(0, 1_000, 20, 2, 1_000), true);
    // Before any piece arrived: the minimum alone.
    assert.equal(endgameLate(5_000, 6_000, undefined, 2, 1_000), true);
    assert.equal(endgameLate(5_000, 5_500, undefined, 2, 1_000), false);
  });

  it('follows the piece times with a moving average', () => {
    let typical = nextTypicalMs(undefined, 800);
    assert.equal(typical, 800);
    typical = nextTypicalMs(typical, 1_600);
    assert.equal(typical, 900);
    for (let i = 0; i < 100; i++) {
      typical = nextTypicalMs(typical, 8_000);
    }
    assert.ok(Math.abs(typical - 8_000) < 1, `settles on the new time: ${typical}`);
  });
});

describe('PiecePicker', () => {
  it('starts the rarest pieces first, at most a few per source', () => {
    const { picker: p } = picker(6, { concurrency: 8, perSource: 2 });
    // Piece 5 is held by one peer, pieces 2-3 by two, the rest by three.
    p.advertise({ id: 'a', seed: false, complete: true, pieces: [] });
    p.advertise({ id: 'b', seed: false, complete: false, pieces: [[0, 5]] });
    p.advertise({
      id: 'c',
      seed: false,
      complete: false,
      pieces: [
        [0, 2],
        [4, 5],
      ],
    });
    const started = p.next();
    assert.deepEqual(indexes(started).slice(0, 3), [5, 2, 3]);
    assert.equal(started[0]?.source, 'a', 'the only holder of piece 5');
    // Three sources, two requests each.
    assert.equal(started.length, 6);
    for (const id of ['a', 'b', 'c']) {
      assert.equal(started.filter((r) => r.source === id).length, 2);
    }
    assert.ok(started.every((r) => r.first));
    assert.deepEqual(p.next(), [], 'every source is at its limit');
  });

  it('asks only for pieces whose hash is known, and none it holds', () => {
    const clock = { ms: 0 };
    const p = new PiecePicker({ settings: SETTINGS, now: () => clock.ms, random: () => 0.5 });
    p.setLayout(4, MiB);
    p.advertise({ id: 'a', seed: false, complete: true, pieces: [] });
    assert.deepEqual(p.next(), []);
    p.hashesKnown(0, 4);
    p.markHave(0);
    p.markHave(2);
    assert.deepEqual(indexes(p.next()).sort(), [1, 3]);
    assert.equal(p.prefix, 1);
  });

  it('keeps a seed to a few requests while peers serve, and prefers peers', () => {
    const { picker: p } = picker(8, { concurrency: 8 });
    p.advertise({ id: 'seed', seed: true, complete: true, pieces: [] });
    p.advertise({ id: 'peer', seed: false, complete: false, pieces: [[0, 2]] });
    const started = p.next();
    assert.equal(started.filter((r) => r.source === 'seed').length, 2);
    assert.deepEqual(
      started
        .filter((r) => r.source === 'peer')
        .map((r) => r.index)
        .sort(),
      [0, 1],
    );
  });

  it('asks the only source there is for more small pieces at once, and goes back to a few per source when another appears', () => {
    // 1 MiB pieces, 6 MiB to a sole source.
    const { picker: p } = picker(16, { concurrency: 8, soleSourceBytes: 6 * MiB });
    p.advertise({ id: 'seed', seed: true, complete: true, pieces: [] });
    const alone = p.next();
    assert.equal(alone.length, 6, 'the seed alone: as many pieces as soleSourceBytes holds');
    assert.ok(alone.every((r) => r.source === 'seed'));
    for (const request of alone) {
      p.markHave(request.index);
      p.settle(request, 'ok');
    }
    // A peer joins: the seed is kept to perSeed again, the peer takes perSource.
    p.advertise({ id: 'peer', seed: false, complete: true, pieces: [] });
    const shared = p.next();
    assert.equal(shared.filter((r) => r.source === 'seed').length, 2);
    assert.equal(shared.filter((r) => r.source === 'peer').length, 4);
    // Pieces larger than that share: never fewer than perSource.
    const { picker: large } = picker(16, { concurrency: 8, soleSourceBytes: 2 * MiB });
    large.advertise({ id: 'seed', seed: true, complete: true, pieces: [] });
    assert.equal(large.next().length, 4);
    // Without the setting a sole source gets perSource.
    const { picker: plain } = picker(16, { concurrency: 8 });
    plain.advertise({ id: 'peer', seed: false, complete: true, pieces: [] });
    assert.equal(plain.next().length, 4);
  });

  it('asks a second source for a late piece at the tail, and cancels nothing itself', () => {
    const { picker: p, clock } = picker(2);
    p.advertise({ id: 'a', seed: false, complete: true, pieces: [] });
    p.advertise({ id: 'b', seed: false, complete: true, pieces: [] });
    const first = p.next();
    assert.equal(first.length, 2);
    // Not late yet: no duplicate.
    clock.ms += 999;
    assert.deepEqual(p.next(), []);
    clock.ms += 1;
    const copies = p.next();
    assert.equal(copies.length, 2);
    for (const copy of copies) {
      assert.equal(copy.first, false);
      const original = first.find((r) => r.index === copy.index);
      assert.ok(original !== undefined);
      assert.notEqual(copy.source, original.source, 'a copy goes to another source');
    }
    assert.equal(p.requestsFor(0).size, 2);
    // At most two copies of a piece.
    clock.ms += 10_000;
    assert.deepEqual(p.next(), []);
  });

  it('leaves a seed that rationed a late piece alone for the deferral in the endgame too', () => {
    const { picker: p, clock } = picker(2, { askWhenStarved: false });
    p.advertise({ id: 'slow', seed: false, complete: true, pieces: [] });
    const first = p.next();
    assert.deepEqual(indexes(first).sort(), [0, 1]);
    const done = first.find((r) => r.index === 1);
    assert.ok(done !== undefined);
    p.markHave(1);
    p.settle(done, 'ok');
    p.advertise({ id: 'seed', seed: true, complete: true, pieces: [] });
    clock.ms += 1_000;
    const [copy, ...more] = p.next();
    assert.deepEqual(more, []);
    assert.ok(copy !== undefined && copy.seed && copy.index === 0, 'an endgame copy from the seed');
    p.settle(copy, 'busy');
    // Refused: not asked again at once (it was, in a loop, before).
    for (let i = 0; i < 5; i += 1) {
      assert.deepEqual(p.next(), []);
      clock.ms += 100;
    }
    assert.equal(p.nextDeadline(), clock.ms - 500 + 750, 'the deferral end is a deadline');
    clock.ms += 250;
    const again = p.next();
    assert.equal(again.length, 1);
    assert.ok(again[0]?.seed === true && again[0].index === 0, 'asked again after the deferral');
  });

  it('names the holders of a piece whose requests are late, for the seed', () => {
    const { picker: p, clock } = picker(8, { perSource: 1, concurrency: 2 });
    p.advertise({ id: 'slow', seed: false, complete: true, pieces: [] });
    p.advertise({ id: 'fast', seed: false, complete: false, pieces: [[0, 4]] });
    const started = p.next();
    assert.deepEqual(started.map((r) => r.source).sort(), ['fast', 'slow']);
    p.advertise({ id: 'seed', seed: true, complete: true, pieces: [] });
    assert.deepEqual(p.lateHolders(6), [], 'nothing late yet');
    clock.ms += 1_000;
    // 'slow' holds every piece and its request is late; 'fast' is late too but lacks piece 6.
    assert.deepEqual(p.lateHolders(6), ['slow']);
    assert.deepEqual(p.lateHolders(2).sort(), ['fast', 'slow']);
    const fast = started.find((r) => r.source === 'fast');
    assert.ok(fast !== undefined);
    p.markHave(fast.index);
    p.settle(fast, 'ok');
    // Pieces take a second now: late is two of them (and nothing of ours is in flight to fast).
    assert.deepEqual(p.lateHolders(2), []);
    clock.ms += 1_000;
    assert.deepEqual(p.lateHolders(2), ['slow']);
  });

  it('takes from a refusal no piece a late peer holds that the refused request did not name', () => {
    const { picker: p, clock } = picker(8, { perSource: 1, concurrency: 2, askWhenStarved: false });
    p.advertise({ id: 'slow', seed: false, complete: true, pieces: [] });
    p.advertise({ id: 'fast', seed: false, complete: false, pieces: [[0, 4]] });
    assert.equal(p.next().length, 2);
    p.advertise({ id: 'seed', seed: true, complete: true, pieces: [] });
    clock.ms += 1_000;
    // Both late; the refused request named 'slow' only (it lacked a piece 'fast' holds).
    const named = new Set(['slow']);
    assert.equal(p.nextDeadline(), undefined);
    p.seedRationed([2, 3], named);
    assert.equal(
      p.nextDeadline(),
      undefined,
      "pieces 'fast' holds: asked for, the seed may send them",
    );
    p.seedRationed([6], named);
    assert.equal(p.nextDeadline(), clock.ms + 750, "a piece 'fast' lacks is deferred");
    clock.ms += 750;
    assert.equal(p.nextDeadline(), undefined);
    p.seedRationed([2], new Set(['slow', 'fast']));
    assert.equal(p.nextDeadline(), clock.ms + 750, 'named both: deferred');
  });

  it('waits for the typical piece time before an endgame copy on a slow link', () => {
    const { picker: p, clock } = picker(3, { concurrency: 2 });
    p.advertise({ id: 'a', seed: false, complete: true, pieces: [] });
    p.advertise({ id: 'b', seed: false, complete: true, pieces: [] });
    // Pieces take 5 s each here.
    const first = p.next();
    assert.equal(first.length, 2);
    clock.ms += 5_000;
    for (const request of first) {
      p.markHave(request.index);
      p.settle(request, 'ok');
    }
    const [last] = p.next();
    assert.ok(last !== undefined);
    // A caller sleeping until the next deadline wakes exactly when the copy is due.
    assert.equal(p.nextDeadline(), clock.ms + 10_000);
    clock.ms += 9_000;
    assert.deepEqual(p.next(), [], '9 s is not late against 5 s pieces');
    clock.ms += 1_000;
    const [copy] = p.next();
    assert.equal(copy?.index, last.index);
    assert.notEqual(copy.source, last.source);
  });

  it('never asks again a source that sent a bad piece', () => {
    const { picker: p } = picker(2);
    p.advertise({ id: 'bad', seed: false, complete: true, pieces: [] });
    const first = p.next();
    assert.deepEqual(
      first.map((r) => r.source),
      ['bad', 'bad'],
    );
    const [sent, other] = first;
    assert.ok(sent !== undefined && other !== undefined);
    p.settle(sent, 'bad');
    p.settle(other, 'dropped');
    assert.deepEqual(p.next(), [], 'the only holder sent a bad piece');
    p.advertise({ id: 'good', seed: false, complete: true, pieces: [] });
    // A hand-out naming the bad source again does not bring it back.
    p.advertise({ id: 'bad', seed: false, complete: true, pieces: [] });
    const again = p.next();
    assert.deepEqual(
      again.map((r) => r.source),
      ['good', 'good'],
    );
  });

  it('skips a source after repeated failures until a hand-out names it again', () => {
    const { picker: p } = picker(1, { concurrency: 1 });
    p.advertise({ id: 'a', seed: false, complete: true, pieces: [] });
    for (let i = 0; i < 3; i++) {
      const [request] = p.next();
      assert.ok(request !== undefined);
      p.settle(request, 'failed');
    }
    assert.deepEqual(p.next(), []);
    assert.equal(p.anyHolder(), false);
    p.advertise({ id: 'a', seed: false, complete: true, pieces: [] });
    assert.equal(p.next().length, 1);
  });

  it('leaves a busy source with none of ours in flight alone, longer with each 429 in a row', () => {
    const { picker: p, clock } = picker(1, { concurrency: 1 });
    p.advertise({ id: 'a', seed: false, complete: true, pieces: [] });
    // Before any piece came: a tenth of the longest wait first, then doubling, up to it.
    for (const wait of [100, 200, 400, 800, 1000, 1000]) {
      const [request] = p.next();
      assert.ok(request !== undefined);
      p.settle(request, 'busy');
      assert.deepEqual(p.next(), []);
      assert.equal(p.anyHolder(), false);
      assert.equal(p.nextDeadline(), clock.ms + wait, 'the backoff is the next deadline');
      clock.ms += wait - 1;
      assert.deepEqual(p.next(), []);
      clock.ms += 1;
    }
    assert.deepEqual(indexes(p.next()), [0]);
  });

  it('waits about one piece time for a busy source once pieces have come', () => {
    const { picker: p, clock } = picker(4, { concurrency: 1 });
    p.advertise({ id: 'a', seed: false, complete: true, pieces: [] });
    const [first] = p.next();
    assert.ok(first !== undefined);
    clock.ms += 30;
    p.markHave(first.index);
    p.settle(first, 'ok');
    const [second] = p.next();
    assert.ok(second !== undefined);
    p.settle(second, 'busy');
    assert.equal(p.nextDeadline(), clock.ms + 30, 'a slot frees when a piece is sent');
    assert.equal(busyBackoff(1000, 30, 0), 30);
    assert.equal(busyBackoff(1000, 30, 3), 240);
    // A slow link's pieces take longer than the longest wait: the wait is what it was.
    assert.equal(busyBackoff(1000, 5000, 0), 1000);
  });

  it('holds a source that answers 429 to what it serves us, with no pause, and asks again as they end', () => {
    const { picker: p, clock } = picker(16, { concurrency: 8, perSource: 4 });
    p.advertise({ id: 'a', seed: false, complete: true, pieces: [] });
    const started = p.next();
    assert.equal(started.length, 4);
    const [refused, ...served] = started;
    assert.ok(refused !== undefined);
    p.settle(refused, 'busy');
    // Three of ours in flight there: the 429 said three is what it gives us now.
    assert.equal(p.anyHolder(), true, 'not backed off');
    assert.deepEqual(p.next(), []);
    const [one] = served;
    assert.ok(one !== undefined);
    clock.ms += 10;
    p.markHave(one.index);
    p.settle(one, 'ok');
    const again = p.next();
    assert.equal(again.length, 1, 'one ended: one more, at once');
    assert.equal(again[0]?.source, 'a');
  });

  it('asks one request at a time of a source that refused connections, until one succeeds', () => {
    const { picker: p, clock } = picker(16, { concurrency: 8, perSource: 4 });
    p.advertise({ id: 'a', seed: false, complete: true, pieces: [] });
    const started = p.next();
    assert.equal(started.length, 4);
    for (const request of started) {
      p.settle(request, 'unreachable');
    }
    p.advertise({ id: 'a', seed: false, complete: true, pieces: [] });
    const [probe, ...more] = p.next();
    assert.ok(probe !== undefined);
    assert.deepEqual(more, [], 'a probe alone');
    clock.ms += 10;
    p.markHave(probe.index);
    p.settle(probe, 'ok');
    assert.equal(p.next().length, 4, 'answered: its window again');
  });
  it('counts the requests that failed together as one failure, and each probe after as one', () => {
    const { picker: p, clock } = picker(16, { concurrency: 8, perSource: 4 });
    p.advertise({ id: 'a', seed: false, complete: true, pieces: [] });
    const started = p.next();
    assert.equal(started.length, 4);
    clock.ms += 10;
    // Given up at once (a silence, or one closed port): one failure, not four, so the source
    // is still probed without a new hand-out (three failures skip it for the blob).
    for (const request of started) {
      p.settle(request, 'unreachable');
    }
    for (let probes = 1; probes <= 2; probes += 1) {
      clock.ms += 10;
      const [probe, ...more] = p.next();
      assert.equal(probe?.source, 'a', `probe ${probes}`);
      assert.deepEqual(more, []);
      clock.ms += 10;
      p.settle(probe, 'unreachable');
    }
    clock.ms += 10;
    assert.deepEqual(p.next(), [], 'the third failure (the second probe) skips it');
  });

  it('asks peers only, for a while, for a piece the seed rationed', () => {
    const { picker: p, clock } = picker(1, { concurrency: 1 });
    p.advertise({ id: 'seed', seed: true, complete: true, pieces: [] });
    const [request] = p.next();
    assert.equal(request?.source, 'seed');
    p.settle(request, 'busy');
    // The seed itself is not backed off: only this piece is deferred.
    assert.equal(p.anyHolder(), true);
    assert.deepEqual(p.next(), []);
    assert.equal(p.nextDeadline(), clock.ms + 750, 'the deferral is the next deadline');
    clock.ms += 749;
    assert.deepEqual(p.next(), []);
    clock.ms += 1;
    const [again] = p.next();
    assert.equal(again?.source, 'seed', 'asked of the seed again once the deferral passed');
    p.settle(again, 'busy');
    p.advertise({ id: 'peer', seed: false, complete: false, pieces: [[0, 1]] });
    assert.equal(p.next()[0]?.source, 'peer');
  });

  it('has no deadline while only an event can change what it starts', () => {
    const { picker: p, clock } = picker(8, { concurrency: 2 });
    assert.equal(p.nextDeadline(), undefined, 'no source yet: a hand-out will tell');
    p.advertise({ id: 'a', seed: false, complete: true, pieces: [] });
    assert.equal(p.next().length, 2);
    // Far from the tail: requests in flight have no endgame deadline; their end is an event.
    assert.equal(p.nextDeadline(), undefined);
    clock.ms += 60_000;
    assert.equal(p.nextDeadline(), undefined);
  });

  it('has a seed part-way through the blob asked for every piece hashed since', () => {
    const clock = { ms: 0 };
    const p = new PiecePicker({ settings: SETTINGS, now: () => clock.ms, random: () => 0.5 });
    p.setLayout(8, MiB);
    p.hashesKnown(0, 2);
    p.advertise({ id: 'seed', seed: true, complete: false, pieces: [[0, 1]] });
    assert.deepEqual(indexes(p.next()).sort(), [0, 1]);
    p.hashesKnown(2, 2);
    assert.deepEqual(indexes(p.next()).sort(), [2, 3]);
  });

  it('leaves out sources excluded from elsewhere', () => {
    const excluded = new Set(['a']);
    const p = new PiecePicker({
      settings: SETTINGS,
      now: () => 0,
      random: () => 0.5,
      excluded: (id) => excluded.has(id),
    });
    p.setLayout(1, MiB);
    p.hashesKnown(0, 1);
    p.advertise({ id: 'a', seed: false, complete: true, pieces: [] });
    assert.deepEqual(p.next(), []);
    excluded.clear();
    assert.equal(p.next().length, 1);
  });

  it('does not count a piece the seed deferred as held until the deferral ends', () => {
    const { picker: p, clock } = picker(2, { concurrency: 8 });
    p.advertise({ id: 'seed', seed: true, complete: true, pieces: [] });
    assert.ok(p.holdsMissing(true));
    const started = p.next();
    assert.deepEqual(indexes(started).sort(), [0, 1]);
    for (const request of started) {
      p.settle(request, 'busy');
    }
    // Every missing piece went to others: who got them is news only the tracker has.
    assert.ok(!p.holdsMissing(true), 'the seed deferred every missing piece');
    assert.ok(p.holdsMissing(), 'the seed still holds them, deferred or not');
    clock.ms += SETTINGS.seedDeferMs;
    assert.ok(p.holdsMissing(true), 'the deferral is over');
  });

  it('asks the seed for pieces only it holds across the blob while peers serve', () => {
    // Ranks that favour the last pieces: past the window, as another agent's might.
    let draws = 0;
    const make = (): PiecePicker => {
      const p = new PiecePicker({
        settings: { ...SETTINGS, concurrency: 4, heldBytes: 4 * MiB },
        now: () => 0,
        random: () => 1 - draws++ / 1000,
      });
      p.setLayout(20, MiB);
      p.hashesKnown(0, 20);
      p.advertise({ id: 'seed', seed: true, complete: true, pieces: [] });
      return p;
    };
    const spread = make();
    spread.advertise({ id: 'peer', seed: false, complete: false, pieces: [[0, 2]] });
    const started = spread.next();
    // The seed's two requests go where this agent's ranks say, past the window [0, 4); the
    // peer serves the window's pieces it holds.
    assert.deepEqual(
      started.filter((r) => r.seed).map((r) => r.index),
      [19, 18],
    );
    assert.deepEqual(
      started
        .filter((r) => !r.seed)
        .map((r) => r.index)
        .sort(),
      [0, 1],
    );
    // The seed alone (a cold pull): the window first, for the client reading in order.
    const alone = make();
    assert.deepEqual(indexes(alone.next()).sort(), [0, 1, 2, 3]);
  });

  it('backs off a piece the seed keeps refusing, doubling up to the longest deferral', () => {
    const { picker: p, clock } = picker(2, {
      concurrency: 1,
      seedDeferMaxMs: 3000,
      askWhenStarved: false,
    });
    p.advertise({ id: 'seed', seed: true, complete: true, pieces: [] });
    // A peer named by a hand-out, still without these pieces: the one the seed sent them to.
    p.advertise({ id: 'peer', seed: false, complete: false, pieces: [] });
    const refuse = (index: number): void => {
      const [request] = p.next();
      assert.equal(request?.index, index);
      p.settle(request, 'busy');
    };
    // Piece 0 refused again and again: asked again only once its deferral ends, each twice
    // as long as the one before, up to the longest.
    const waits: number[] = [];
    for (let round = 0; round < 5; round++) {
      refuse(0);
      // Meanwhile the seed is asked for the piece it has not refused.
      assert.deepEqual(indexes(p.next()), [1]);
      const deadline = p.nextDeadline();
      assert.ok(deadline !== undefined);
      waits.push(deadline - clock.ms);
      clock.ms = deadline;
      p.settle([...p.requestsFor(1)][0] as PickedRequest, 'dropped');
    }
    assert.deepEqual(waits, [750, 1500, 3000, 3000, 3000]);
    // Held, from a peer: the count goes with it; a piece refused for the first time waits the
    // first deferral.
    p.markHave(0);
    refuse(1);
    assert.equal(p.nextDeadline(), clock.ms + 750);
  });

  it('leaves to peers for the first deferral the pieces a refusal says the seed refuses too, counting no refusal', () => {
    const { picker: p, clock } = picker(4, {
      concurrency: 1,
      seedDeferMaxMs: 8000,
      askWhenStarved: false,
    });
    p.advertise({ id: 'seed', seed: true, complete: true, pieces: [] });
    p.advertise({ id: 'peer', seed: false, complete: false, pieces: [] });
    p.markHave(0);
    // Held, unknown (past the blob) or not: only what is missing here is deferred.
    p.seedRationed([0, 1, 2, 9]);
    const [first] = p.next();
    assert.ok(first !== undefined);
    assert.deepEqual([first.index, first.source], [3, 'seed'], 'the piece the seed serves');
    p.settle(first, 'ok');
    p.markHave(3);
    assert.deepEqual(p.next(), [], 'pieces 1 and 2 wait for peers');
    assert.equal(p.nextDeadline(), clock.ms + 750, 'for the first deferral');
    clock.ms += 750;
    const [asked] = p.next();
    assert.ok(asked !== undefined);
    assert.equal(asked.source, 'seed', 'asked of the seed once it passed');
    // Refused now: a first refusal (750 ms), the header having counted none.
    p.settle(asked, 'busy');
    const [other] = p.next();
    assert.ok(other !== undefined);
    assert.notEqual(other.index, asked.index);
    p.settle(other, 'dropped');
    assert.equal(p.nextDeadline(), clock.ms + 750);
    // Named again: a piece deferred keeps its deferral, one whose deferral ran out is deferred
    // again.
    clock.ms += 500;
    p.seedRationed([asked.index, other.index]);
    assert.deepEqual(p.next(), []);
    assert.equal(p.nextDeadline(), clock.ms + 250, "the refused piece's deferral, unchanged");
    clock.ms += 250;
    const [again] = p.next();
    assert.ok(again !== undefined);
    assert.equal(again.index, asked.index);
    p.settle(again, 'busy');
    assert.equal(p.nextDeadline(), clock.ms + 500, "the other's deferral ends first");
    clock.ms += 500;
    assert.deepEqual(indexes(p.next()), [other.index]);
  });

  /** The deferrals of `rounds` refusals by the seed of a one-piece blob's only piece, in ms. */
  function refusedDeferrals(p: PiecePicker, clock: { ms: number }, rounds: number): number[] {
    const waits: number[] = [];
    for (let round = 0; round < rounds; round++) {
      const [request] = p.next();
      assert.ok(request !== undefined);
      p.settle(request, 'busy');
      const deadline = p.nextDeadline();
      assert.ok(deadline !== undefined);
      waits.push(deadline - clock.ms);
      clock.ms = deadline;
    }
    return waits;
  }

  it('asks the seed again at once for what it refused once the deferrals end, the count with them', () => {
    const { picker: p, clock } = picker(1, {
      concurrency: 1,
      seedDeferMaxMs: 8000,
      askWhenStarved: false,
    });
    p.advertise({ id: 'seed', seed: true, complete: true, pieces: [] });
    p.advertise({ id: 'peer', seed: false, complete: false, pieces: [] });
    // The piece refused four times: deferred 6 s now.
    assert.deepEqual(refusedDeferrals(p, clock, 3), [750, 1500, 3000]);
    const [refused] = p.next();
    assert.ok(refused !== undefined);
    p.settle(refused, 'busy');
    assert.equal(p.nextDeadline(), clock.ms + 6000);
    assert.deepEqual(p.next(), [], 'deferred');
    // The swarm no longer hears this agent: nobody can say who got it.
    p.endSeedDeferrals();
    assert.equal(p.nextDeadline(), undefined);
    const [again] = p.next();
    assert.equal(again?.source, 'seed', 'asked of the seed again with no wait');
    // Refused again after all (a seed that did not know): the first deferral, not the fifth.
    p.settle(again, 'busy');
    assert.equal(p.nextDeadline(), clock.ms + SETTINGS.seedDeferMs);
  });

  it('keeps the deferral flat while the seed is the only source', () => {
    // Every other agent evicted the blob: the seed's refusals may count copies nobody holds
    // any more, and a growing wait would outlast the stall timeout.
    const { picker: p, clock } = picker(1, {
      concurrency: 1,
      seedDeferMaxMs: 8000,
      askWhenStarved: false,
    });
    p.advertise({ id: 'seed', seed: true, complete: true, pieces: [] });
    assert.deepEqual(refusedDeferrals(p, clock, 4), Array(4).fill(SETTINGS.seedDeferMs));
  });

  it('keeps the deferral flat without a longest deferral', () => {
    const { picker: p, clock } = picker(1, { concurrency: 1, askWhenStarved: false });
    p.advertise({ id: 'seed', seed: true, complete: true, pieces: [] });
    // A peer that could serve: the deferral would grow if a longest one were set.
    p.advertise({ id: 'peer', seed: false, complete: false, pieces: [] });
    assert.deepEqual(refusedDeferrals(p, clock, 3), Array(3).fill(SETTINGS.seedDeferMs));
  });

  it('counts a piece the seed did not defer, however many deferred pieces came from peers', () => {
    const { picker: p } = picker(3, { concurrency: 2 });
    p.advertise({ id: 'seed', seed: true, complete: true, pieces: [] });
    const started = p.next();
    assert.deepEqual(indexes(started).sort(), [0, 1]);
    for (const request of started) {
      p.settle(request, 'busy');
    }
    // Piece 0 came from a peer: two deferrals for two missing pieces, one of them never asked.
    p.markHave(0);
    assert.ok(p.holdsMissing(true), 'piece 2 is still offered by the seed');
  });

  it('never asks a dropped seed again, and says when no source holds a missing piece', () => {
    const { picker: p } = picker(4, { concurrency: 8 });
    p.advertise({ id: 'seed', seed: true, complete: false, pieces: [[0, 4]] });
    p.advertise({ id: 'peer', seed: false, complete: false, pieces: [[0, 2]] });
    assert.ok(p.holdsMissing());
    p.drop('seed');
    // A later hand-out that still names it changes nothing.
    p.advertise({ id: 'seed', seed: true, complete: false, pieces: [[0, 4]] });
    const started = p.next();
    assert.deepEqual(indexes(started).sort(), [0, 1]);
    assert.ok(started.every((r) => r.source === 'peer'));
    for (const request of started) {
      p.settle(request, 'ok');
      p.markHave(request.index);
    }
    assert.ok(!p.holdsMissing(), 'the peer holds nothing more, the seed is gone');
    // A seed dropped before any hand-out named it stays dropped.
    p.drop('seed-2');
    p.advertise({ id: 'seed-2', seed: true, complete: true, pieces: [] });
    assert.ok(!p.holdsMissing());
    assert.deepEqual(p.next(), []);
  });
});

/**
 * Runs a picker over one complete source whose piece requests end when `due` says, on the
 * fake clock, until every piece is held; returns the most requests that were in flight at once.
 */
function runAgainst(
  count: number,
  settings: Partial<PickerSettings>,
  due: (startMs: number, link: { freeMs: number }) => number,
): { peak: number } {
  const { picker: p, clock } = picker(count, settings);
  p.advertise({ id: 'a', seed: false, complete: true, pieces: [] });
  const link = { freeMs: clock.ms };
  const inFlight: { request: PickedRequest; dueMs: number }[] = [];
  let peak = 0;
  while (!p.done) {
    for (const request of p.next()) {
      inFlight.push({ request, dueMs: due(clock.ms, link) });
    }
    peak = Math.max(peak, inFlight.length);
    inFlight.sort((a, b) => a.dueMs - b.dueMs);
    const next = inFlight.shift();
    assert.ok(next !== undefined, 'something is in flight until the end');
    clock.ms = Math.max(clock.ms, next.dueMs);
    p.markHave(next.request.index);
    p.settle(next.request, 'ok');
  }
  return { peak };
}

describe('requests in flight per source', () => {
  it('grow with measured progress where each request waits on latency, not on the link', () => {
    // Loopback: every piece takes 10 ms however many are in flight, so each request more is
    // more pieces per second.
    const { peak } = runAgainst(
      400,
      { concurrency: 8, perSource: 2, heldBytes: 8 * MiB },
      (now) => now + 10,
    );
    assert.equal(peak, 8, 'grew from 2 to the concurrency');
  });

  it('stop growing where the link is full: a 25 Mbit/s link keeps about its configured cap', () => {
    // A link that sends one 1 MiB piece at a time, 335 ms each: more in flight only queues.
    const { peak } = runAgainst(
      200,
      { concurrency: 8, perSource: 2, heldBytes: 8 * MiB },
      (now, link) => {
        link.freeMs = Math.max(now, link.freeMs) + 335;
        return link.freeMs;
      },
    );
    assert.ok(peak <= 3, `at most one request past the cap to learn that (peak ${peak})`);
  });

  it('never pass the most per source, and keep a 429 limit until rounds raise it back', () => {
    const window = {
      grown: 10,
      limit: undefined,
      roundStartMs: 0,
      roundPieces: 0,
      roundFull: false,
      bestRate: undefined,
    };
    assert.equal(windowCap(window, 4, 8), 8);
    assert.equal(windowCap({ ...window, limit: 3 }, 4, 8), 3);
    assert.equal(windowCap({ ...window, limit: 0 }, 4, 8), 1, 'never below one');
  });
});

describe('a starved download', () => {
  /**
   * Five pieces. Piece 1 came at once from a slow peer holding them all (so the download's
   * lateness is known: the least, 1 s), which has pieces 0 and 2 in flight since; the seed has
   * refused 3 and 4 twice (deferred 1.5 s now: it handed them to others). Nothing has come for
   * 1 s: the download starves now. (No endgame copies: one copy of a piece at a time, so what
   * is seen is the starving alone.)
   */
  function starving(random?: () => number): {
    p: PiecePicker;
    clock: { ms: number };
    slow: PickedRequest[];
  } {
    const { picker: p, clock } = picker(
      5,
      { concurrency: 4, perSource: 2, seedDeferMaxMs: 8000, endgameCopies: 1 },
      random,
    );
    p.advertise({ id: 'slow', seed: false, complete: true, pieces: [] });
    const first = p.next();
    assert.deepEqual(indexes(first).sort(), [0, 1]);
    const quick = first.find((r) => r.index === 1);
    assert.ok(quick !== undefined);
    p.markHave(1);
    p.settle(quick, 'ok');
    const more = p.next();
    assert.deepEqual(indexes(more), [2]);
    const slow = [...first.filter((r) => r.index === 0), ...more];
    p.advertise({ id: 'seed', seed: true, complete: true, pieces: [] });
    for (let round = 0; round < 2; round++) {
      const seed = p.next();
      assert.deepEqual(indexes(seed).sort(), [3, 4]);
      assert.ok(seed.every((r) => r.seed && r.starvedLateMs === undefined));
      for (const request of seed) {
        p.settle(request, 'busy');
      }
      if (round === 0) {
        clock.ms += 750;
      }
    }
    assert.equal(p.nextDeadline(), clock.ms + 250, 'the download starves at 1 s');
    clock.ms += 250;
    return { p, clock, slow };
  }

  it('asks the seed for one piece, whatever its deferral, once nothing came for the lateness', () => {
    const { p, clock } = starving();
    clock.ms -= 1;
    assert.deepEqual(p.next(), [], 'not yet: the deferrals hold');
    clock.ms += 1;
    const [starved, ...more] = p.next();
    assert.deepEqual(more, [], 'one request for starving at a time');
    assert.ok(starved !== undefined && starved.seed);
    assert.equal(starved.starvedLateMs, 1000, 'it says its lateness');
    assert.equal(starved.index, 3, 'drawn among the pieces with no request in flight');
    clock.ms += 100;
    assert.deepEqual(p.next(), [], 'no other while it is in flight');
    // It came: still starved (nothing came otherwise), so the next piece is asked at once.
    p.markHave(starved.index);
    p.settle(starved, 'ok');
    const [next] = p.next();
    assert.ok(next !== undefined && next.seed);
    assert.equal(next.index, 4);
    assert.equal(next.starvedLateMs, 1000);
  });

  it('draws its piece among those with no request in flight, so downloads starved together differ', () => {
    // Three downloads starved alike (the others of a slow node that got the seed's copies),
    // each with its own draws: the lowest piece for all of them collided at the seed.
    const asked = [0, 0.5, 0.99].map((draw) => {
      const { p } = starving(() => draw);
      const [starved, ...more] = p.next();
      assert.deepEqual(more, []);
      assert.ok(starved?.starvedLateMs !== undefined && starved.seed);
      return starved.index;
    });
    assert.deepEqual(asked, [3, 4, 4], 'pieces 0 and 2 are in flight to the slow peer');
  });

  it('draws within the window past the prefix while a piece there lacks a request', () => {
    // 40 pieces, the window 8 past the prefix (the concurrency; 8 MiB held): piece 0 came,
    // the seed refused every other one (deferred 5 s), and nothing came for a second.
    const { picker: p, clock } = picker(
      40,
      { concurrency: 8, heldBytes: 8 * MiB, seedDeferMs: 5000, seedDeferMaxMs: 8000 },
      () => 0.99,
    );
    p.advertise({ id: 'seed', seed: true, complete: true, pieces: [] });
    for (let asked = p.next(); asked.length > 0; asked = p.next()) {
      for (const request of asked) {
        if (request.index === 0) {
          p.markHave(0);
          p.settle(request, 'ok');
        } else {
          p.settle(request, 'busy');
        }
      }
    }
    assert.equal(p.prefix, 1, 'piece 0 came, the others were refused');
    clock.ms += 1000;
    const [starved, ...more] = p.next();
    assert.deepEqual(more, []);
    assert.ok(starved?.starvedLateMs !== undefined);
    // Drawn last among pieces 1-8, not among 1-39.
    assert.equal(starved.index, 8);
  });

  it('asks for a piece whose request is late when every missing piece has one', () => {
    const { p, clock } = starving();
    // Pieces 3 and 4 come from elsewhere: only 0 and 2 are missing, both late at the slow peer.
    p.markHave(3);
    p.markHave(4);
    clock.ms += 1000;
    const [starved, ...more] = p.next().filter((r) => r.starvedLateMs !== undefined);
    assert.deepEqual(more, []);
    assert.ok(starved !== undefined && starved.seed);
    assert.equal(starved.index, 0, 'the first late one');
  });

  it('asks again only after the least lateness when the seed refused anyway', () => {
    const { p, clock } = starving();
    const [starved] = p.next();
    assert.ok(starved?.starvedLateMs !== undefined);
    p.settle(starved, 'busy');
    // No spinning on a seed that refuses (it counts a copy handed out since the wait began).
    assert.equal(p.nextDeadline(), clock.ms + 1000);
    clock.ms += 999;
    assert.ok(p.next().every((r) => r.starvedLateMs === undefined));
    clock.ms += 1;
    const again = p.next().filter((r) => r.starvedLateMs !== undefined);
    assert.equal(again.length, 1, 'asked again a second after the refusal');
    assert.equal(again[0]?.starvedLateMs, 1000);
  });

  it('is not starved while a request in flight is not late, and again once a piece came', () => {
    const { p, clock, slow } = starving();
    // A piece came from the slow peer just before: the lateness runs from there.
    clock.ms -= 1;
    const [first] = slow;
    assert.ok(first !== undefined);
    p.markHave(first.index);
    p.settle(first, 'ok');
    clock.ms += 1;
    // The slow peer is asked for more; nothing for the seed (its deferrals hold).
    const fresh = p.next();
    assert.ok(fresh.length >= 1);
    assert.ok(fresh.every((r) => !r.seed && r.starvedLateMs === undefined));
    // Late is still the least (the typical piece time is 125 ms now), from the fresh request's
    // start.
    const starvesAt = clock.ms + 1000;
    while (clock.ms < starvesAt) {
      for (const request of p.next()) {
        assert.equal(request.starvedLateMs, undefined, 'the fresh request is not late yet');
        p.settle(request, 'busy');
      }
      const deadline = p.nextDeadline();
      assert.ok(deadline !== undefined && deadline <= starvesAt);
      clock.ms = deadline;
    }
    const starved = p.next().filter((r) => r.starvedLateMs !== undefined);
    assert.equal(starved.length, 1);
    assert.equal(starved[0]?.starvedLateMs, 1000);
  });

  it('with nothing in flight, starves after the least lateness, however slow pieces were', () => {
    const { picker: p, clock } = picker(2, { concurrency: 1, endgameCopies: 1 });
    p.advertise({ id: 'slow', seed: false, complete: false, pieces: [[0, 1]] });
    const [slow] = p.next();
    assert.ok(slow !== undefined);
    // The slow peer's piece took 5 s: late is 10 s now.
    clock.ms += 5_000;
    p.markHave(0);
    p.settle(slow, 'ok');
    p.advertise({ id: 'seed', seed: true, complete: true, pieces: [] });
    const [refused] = p.next();
    assert.ok(refused !== undefined && refused.seed && refused.starvedLateMs === undefined);
    p.settle(refused, 'busy');
    // Nothing in flight, nothing to wait for but a hand-out: starved a second after the piece.
    assert.equal(p.nextDeadline(), clock.ms + 750, 'the deferral ends first');
    clock.ms += 750;
    const [again] = p.next();
    assert.ok(again !== undefined && again.starvedLateMs === undefined);
    p.settle(again, 'busy');
    assert.equal(p.nextDeadline(), clock.ms + 250);
    clock.ms += 250;
    const [starved] = p.next();
    assert.ok(starved !== undefined && starved.seed);
    assert.equal(starved.starvedLateMs, 10_000, 'it says its lateness, the copies it may have');
  });

  it('starves with every slot taken by late requests, and asks the seed beyond them', () => {
    const { picker: p, clock } = picker(6, { concurrency: 2, perSource: 2, endgameCopies: 1 });
    p.advertise({ id: 'slow', seed: false, complete: true, pieces: [] });
    const [quick, other] = p.next();
    assert.ok(quick !== undefined && other !== undefined);
    p.markHave(quick.index);
    p.settle(quick, 'ok');
    // Both slots go to the slow peer, and nothing comes from it.
    assert.equal(p.next().length, 1);
    p.advertise({ id: 'seed', seed: true, complete: true, pieces: [] });
    assert.deepEqual(p.next(), [], 'every slot taken');
    clock.ms += 999;
    assert.deepEqual(p.next(), []);
    clock.ms += 1;
    const [starved, ...more] = p.next();
    assert.deepEqual(more, []);
    assert.ok(starved !== undefined && starved.seed && starved.starvedLateMs === 1000);
  });

  it('is never starved before a piece came, without a seed, nor when told not to ask', () => {
    const { picker: p, clock } = picker(2, { concurrency: 1 });
    p.advertise({ id: 'slow', seed: false, complete: true, pieces: [] });
    assert.equal(p.next().length, 1);
    clock.ms += 5000;
    assert.deepEqual(p.next(), []);
    assert.equal(p.nextDeadline(), undefined);
    const { picker: q, clock: qClock } = picker(2, { concurrency: 1, askWhenStarved: false });
    q.advertise({ id: 'seed', seed: true, complete: true, pieces: [] });
    const [refused] = q.next();
    assert.ok(refused !== undefined);
    q.settle(refused, 'busy');
    qClock.ms += 5000;
    assert.ok(q.next().every((r) => r.starvedLateMs === undefined));
    // A cold start: the seed refuses every piece (it handed them to others), nothing came yet.
    const { picker: r, clock: rClock } = picker(2, { concurrency: 1 });
    r.advertise({ id: 'seed', seed: true, complete: true, pieces: [] });
    for (let round = 0; round < 4; round++) {
      for (const request of r.next()) {
        assert.equal(request.starvedLateMs, undefined);
        r.settle(request, 'busy');
      }
      rClock.ms += 1500;
    }
  });
});
