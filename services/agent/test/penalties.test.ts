/**
 * The sources every download leaves alone, on a fake clock: refusals double the penalty, a
 * hand-out that names the source again cuts it back, and nothing stays in memory for good.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { SourcePenalties } from '../src/swarm/penalties.js';

const BASE_MS = 2000;
const MAX_MS = 8000;

function penalties(): { book: SourcePenalties; clock: { ms: number } } {
  const clock = { ms: 1_000_000 };
  return { book: new SourcePenalties(() => clock.ms), clock };
}

/** Refuses `peer` each time its penalty ends; returns the penalties' lengths. */
function refuseInARow(book: SourcePenalties, clock: { ms: number }, times: number): number[] {
  const lengths: number[] = [];
  for (let i = 0; i < times; i += 1) {
    book.refused('seed', BASE_MS, MAX_MS);
    const ends = book.penaltyEnds('seed');
    assert.ok(ends !== undefined);
    lengths.push(ends - clock.ms);
    clock.ms = ends + 1;
    assert.ok(!book.isPenalized('seed'));
  }
  return lengths;
}

describe('SourcePenalties', () => {
  it('doubles the penalty while a source keeps refusing, up to the most', () => {
    const { book, clock } = penalties();
    assert.deepEqual(refuseInARow(book, clock, 5), [2000, 4000, 8000, 8000, 8000]);
  });

  it("names the sources that sent a bad piece, the latest first, until the penalty's end", () => {
    const { book, clock } = penalties();
    book.penalize('agent-a', 5_000);
    clock.ms += 10;
    book.penalize('agent-b', 5_000);
    book.refused('agent-c', BASE_MS, MAX_MS);
    assert.deepEqual(book.corrupting(), ['agent-b', 'agent-a'], 'a refusal is not');
    // Answering a request changes nothing: a source that corrupts may answer well.
    book.answered('agent-a');
    clock.ms += 4_985;
    assert.deepEqual(book.corrupting(), ['agent-b', 'agent-a']);
    clock.ms += 10;
    assert.deepEqual(book.corrupting(), ['agent-b'], "agent-a's penalty ended");
    clock.ms += 10;
    assert.deepEqual(book.corrupting(), []);
    // Pruned with the rest at the next penalty or refusal: only the refusals stay.
    book.refused('agent-d', BASE_MS, MAX_MS);
    assert.equal(book.tracked, 2);
  });

  it('names the sources that refused lately until they answer, whatever the tracker says', () => {
    const { book, clock } = penalties();
    book.refused('agent-a', BASE_MS, MAX_MS);
    clock.ms += 10;
    book.refused('agent-b', BASE_MS, MAX_MS);
    book.penalize('agent-c', 5_000);
    assert.deepEqual(
      book.unreachable(),
      ['agent-b', 'agent-a'],
      'the latest first; a bad piece is not',
    );
    // The tracker still names agent-a: its penalty is cut back, but it is still unreachable.
    book.handedOut('agent-a');
    assert.deepEqual(book.unreachable(), ['agent-b', 'agent-a']);
    clock.ms += 10;
    book.refused('agent-a', BASE_MS, MAX_MS);
    assert.deepEqual(book.unreachable(), ['agent-a', 'agent-b'], 'refused again: the latest');
    book.answered('agent-b');
    assert.deepEqual(book.unreachable(), ['agent-a'], 'agent-b answered');
    clock.ms += 15_001;
    assert.deepEqual(book.unreachable(), [], '15 s without a refusal: forgotten');
  });

  it('counts refusals while penalised once (requests started together)', () => {
    const { book, clock } = penalties();
    book.refused('seed', BASE_MS, MAX_MS);
    book.refused('seed', BASE_MS, MAX_MS);
    book.refused('seed', BASE_MS, MAX_MS);
    assert.equal(book.penaltyEnds('seed'), clock.ms + 2000);
    clock.ms += 2001;
    assert.deepEqual(refuseInARow(book, clock, 1), [4000], 'the second refusal in a row');
  });

  it('forgets refusals once the source answers', () => {
    const { book, clock } = penalties();
    refuseInARow(book, clock, 3);
    book.answered('seed');
    assert.deepEqual(refuseInARow(book, clock, 1), [2000]);
  });

  it('cuts the penalty back when a hand-out names the source after its refusal', () => {
    // A seed server restarted: refused at 0, 2 and 6 s (penalty to 14 s), back at 6.5 s and
    // named by a hand-out at 7 s: asked again at 8 s, not 14 s.
    const { book, clock } = penalties();
    const start = clock.ms;
    refuseInARow(book, clock, 2);
    book.refused('seed', BASE_MS, MAX_MS);
    const refusedAt = clock.ms;
    assert.equal(book.penaltyEnds('seed'), refusedAt + 8000);
    clock.ms = start + 7000;
    book.handedOut('seed');
    assert.equal(book.penaltyEnds('seed'), refusedAt + BASE_MS);
    // Its count starts over: refused again, it is left alone for the shortest penalty.
    clock.ms = refusedAt + BASE_MS + 1;
    assert.deepEqual(refuseInARow(book, clock, 1), [2000]);
    // Named once the cut-back penalty is over: lifted at once.
    book.refused('seed', BASE_MS, MAX_MS);
    clock.ms += 2500;
    book.handedOut('seed');
    assert.ok(!book.isPenalized('seed'));
  });

  it('never cuts a longer penalty short with a shorter one', () => {
    const { book, clock } = penalties();
    book.penalize('peer', 60_000);
    book.penalize('peer', 5_000);
    assert.equal(book.penaltyEnds('peer'), clock.ms + 60_000, 'the bad piece keeps its minute');
    clock.ms += 58_000;
    book.penalize('peer', 5_000);
    assert.equal(book.penaltyEnds('peer'), clock.ms + 5_000, 'a later end moves it on');
  });

  it('keeps a penalty a hand-out cannot excuse: a bad piece', () => {
    const { book, clock } = penalties();
    book.penalize('peer', 10_000);
    book.handedOut('peer');
    assert.equal(book.penaltyEnds('peer'), clock.ms + 10_000);
    // A refusal while silent changes nothing, and a hand-out then still leaves it alone.
    book.refused('peer', BASE_MS, MAX_MS);
    book.handedOut('peer');
    assert.equal(book.penaltyEnds('peer'), clock.ms + 10_000);
    // Refused, then penalised for a bad piece: the hand-out lifts no part of that.
    book.refused('other', BASE_MS, MAX_MS);
    book.penalize('other', 60_000);
    book.handedOut('other');
    assert.equal(book.penaltyEnds('other'), clock.ms + 60_000);
  });

  it('lets the count decay, and keeps no source once its penalty, count and refusal are over', () => {
    const { book, clock } = penalties();
    refuseInARow(book, clock, 3);
    // Not refused again for longer than the longest penalty: the next refusal is a first one.
    clock.ms += MAX_MS + 1;
    book.penalize('unrelated', 1);
    assert.deepEqual(refuseInARow(book, clock, 1), [2000]);
    for (let i = 0; i < 1000; i += 1) {
      book.refused(`gone-${i}`, BASE_MS, MAX_MS);
      book.penalize(`bad-${i}`, 30_000);
    }
    assert.ok(book.tracked >= 2000);
    // Past the penalties, the counts and the time the refused ones are named unreachable.
    clock.ms += 60_000 + 1;
    book.penalize('last', 1);
    assert.equal(book.tracked, 1, 'only the newest penalty is left');
  });
});
