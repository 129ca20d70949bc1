import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { haveDue, wantPacing, WantPacer } from '../src/index.js';

/** The haves a download of `total` pieces sends when it gets them one at a time. */
function havesOneByOne(total: number): number[] {
  const sent: number[] = [];
  let announced = 0;
  for (let held = 1; held <= total; held++) {
    if (haveDue(announced, held, total)) {
      sent.push(held);
      announced = held;
    }
  }
  return sent;
}

describe('have pacing', () => {
  it('announces as the held pieces double, then every sixty-fourth, and once complete', () => {
    assert.deepEqual(havesOneByOne(256), [
      1,
      2,
      ...Array.from({ length: 64 }, (_, i) => 4 * (i + 1)),
    ]);
    assert.deepEqual(havesOneByOne(4096).slice(0, 9), [1, 2, 4, 8, 16, 32, 64, 128, 192]);
    assert.deepEqual(havesOneByOne(8), [1, 2, 3, 4, 5, 6, 7, 8]);
    assert.deepEqual(havesOneByOne(1), [1]);
  });

  it('sends at most log2(total / 64) + 66 haves however large the blob', () => {
    for (const total of [1, 7, 256, 1000, 4096]) {
      const bound = Math.max(0, Math.ceil(Math.log2(total / 64))) + 66;
      assert.ok(havesOneByOne(total).length <= bound, String(total));
    }
  });

  it('announces losing every piece, and nothing twice', () => {
    assert.equal(haveDue(40, 0, 256), true);
    assert.equal(haveDue(0, 0, 256), false);
    assert.equal(haveDue(256, 256, 256), false);
    assert.equal(haveDue(128, 131, 256), false);
    assert.equal(haveDue(128, 132, 256), true);
    assert.equal(haveDue(250, 256, 256), true);
  });
});

describe('want pacing', () => {
  const pacing = wantPacing(500);

  it('asks at once, then only when a have of its own goes unanswered', () => {
    const pacer = new WantPacer(pacing);
    const sent: number[] = [];
    // Pieces keep coming from known holders, and each have is answered by a push.
    for (let now = 0; now <= 60_000; now += 50) {
      pacer.gotPiece(now);
      if (now % 5000 === 0) {
        pacer.announced(now);
        pacer.handout(true);
      }
      if (pacer.due(now, false)) {
        pacer.sent(now);
        sent.push(now);
      }
    }
    assert.deepEqual(sent, [0]);
    // A have nobody answered (the tracker that followed it stopped): a want 8 s later.
    pacer.announced(61_000);
    pacer.announced(62_000);
    pacer.gotPiece(68_000);
    assert.equal(pacer.due(68_999, false), false);
    assert.equal(pacer.due(69_000, false), true);
    pacer.sent(69_000);
    // The want's own answer clears it.
    pacer.handout(true);
    pacer.gotPiece(70_000);
    assert.equal(pacer.due(71_000, false), false);
  });

  it('asks once at a time: an unanswered want holds the next back', () => {
    const pacer = new WantPacer(pacing);
    pacer.sent(0, true);
    assert.equal(pacer.due(7999, true), false);
    assert.equal(pacer.due(8000, true), true);
    // Still unanswered: 16 s (the waiting gap, the longest) from then on.
    pacer.sent(8000, true);
    assert.equal(pacer.due(23_999, true), false);
    assert.equal(pacer.due(24_000, true), true);
    pacer.sent(24_000, true);
    pacer.sent(56_000, true);
    assert.equal(pacer.nextDueMs(56_000, true), 72_000);
    // Answered: asked again once starved, after its starved gap (doubled by each want).
    pacer.handout(true);
    assert.equal(pacer.due(63_999, true), false);
    assert.equal(pacer.due(64_000, true), true);
  });

  it('says since when a want has gone unanswered: the first of a run, until a hand-out', () => {
    const pacer = new WantPacer(pacing);
    assert.equal(pacer.unansweredSinceMs, undefined);
    pacer.sent(1000, true);
    assert.equal(pacer.unansweredSinceMs, 1000);
    // Asked again, still unanswered: the run started with the first.
    pacer.sent(9000, true);
    assert.equal(pacer.unansweredSinceMs, 1000);
    pacer.handout(false);
    assert.equal(pacer.unansweredSinceMs, undefined);
    // A hand-out pushed with nobody asking changes nothing; the next want starts a new run.
    pacer.handout(true);
    pacer.sent(30_000, true);
    assert.equal(pacer.unansweredSinceMs, 30_000);
  });

  it('counts a download that got no piece for a while as starved', () => {
    const pacer = new WantPacer(pacing);
    pacer.sent(0);
    pacer.handout(true);
    pacer.gotPiece(100);
    assert.equal(pacer.starved(2099, false), false);
    assert.equal(pacer.due(2099, false), false);
    assert.equal(pacer.due(2100, false), true);
    pacer.sent(2100, false);
    pacer.handout(true);
    // Still no piece: the next want waits twice as long.
    assert.equal(pacer.due(3099, false), false);
    assert.equal(pacer.due(3100, false), true);
  });

  it('asks again after the base interval when starved, later each time without progress', () => {
    const pacer = new WantPacer(pacing);
    pacer.sent(0);
    pacer.handout(true);
    assert.equal(pacer.due(400, true), false);
    assert.equal(pacer.due(500, true), true);
    assert.equal(pacer.due(500, false), false);
    assert.equal(pacer.nextDueMs(400, true), 500);
    // Starved again and again with no new piece: 0.5 s, then 1 s, then 2 s.
    pacer.sent(500, true);
    pacer.handout(true);
    assert.equal(pacer.due(1400, true), false);
    assert.equal(pacer.due(1500, true), true);
    pacer.sent(1500, true);
    pacer.handout(true);
    assert.equal(pacer.due(3400, true), false);
    assert.equal(pacer.due(3500, true), true);
    // A have went out: starved, it asks after the base interval again.
    pacer.announced(1900);
    assert.equal(pacer.due(2000, true), true);
  });

  it('asks the base interval after the seed first rationed a piece, however far its gap doubled', () => {
    const pacer = new WantPacer(pacing);
    // The first want, starved (nobody held the blob yet): the next starved one waits 1 s.
    pacer.sent(0, true);
    pacer.handout(true);
    assert.equal(pacer.nextDueMs(100, true), 1000);
    // The seed sent the only piece to another agent: ask who, 0.5 s after it said so.
    pacer.rationed(250);
    pacer.rationed(400);
    assert.equal(pacer.nextDueMs(300, true), 750, 'from the first refusal since the want');
    assert.equal(pacer.due(749, true), false);
    assert.equal(pacer.due(750, true), true);
    // With known holders of missing pieces, a refusal tells nothing new.
    assert.equal(pacer.due(750, false), false);
    pacer.sent(750, true);
    pacer.handout(true);
    // Spent by that want: the doubled gap again, and refusals bring nothing forward until
    // the download announces progress.
    assert.equal(pacer.nextDueMs(800, true), 750 + 2000);
    pacer.rationed(760);
    assert.equal(pacer.nextDueMs(800, true), 750 + 2000);
    // Progress announced: one refusal may bring a want forward again, never sooner than the
    // base interval after the last want.
    pacer.announced(770);
    pacer.rationed(780);
    assert.equal(pacer.nextDueMs(800, true), 1250);
    // A piece that came meanwhile (from the seed, say) tells nothing of who got the refused
    // one: the want stays due.
    pacer.gotPiece(900);
    assert.equal(pacer.nextDueMs(1000, true), 1250);
    pacer.sent(1250, true);
    pacer.handout(true);
    pacer.rationed(1300);
    assert.equal(pacer.nextDueMs(1300, true), 1250 + 1000, 'spent: its own gap');
  });

  it('adds no more wants than the haves when the seed refuses every request for long', () => {
    const pacer = new WantPacer(pacing);
    let wants = 0;
    let haves = 0;
    for (let now = 0; now <= 120_000; now += 50) {
      // Turned away by a seed whose every upload slot stays taken, on every loop turn; a
      // piece from a peer now and then, announced every 10 s.
      pacer.rationed(now);
      if (now % 10_000 === 0) {
        pacer.gotPiece(now);
        pacer.announced(now);
        haves += 1;
      }
      if (pacer.due(now, true)) {
        pacer.sent(now, true);
        pacer.handout(true);
        wants += 1;
      }
    }
    // Without the refusals' want: 0, 0.5, 1.5, 3.5, 7.5 s after each have, then every 8 s.
    const withoutRefusals = new WantPacer(pacing);
    let baseline = 0;
    for (let now = 0; now <= 120_000; now += 50) {
      if (now % 10_000 === 0) {
        withoutRefusals.gotPiece(now);
        withoutRefusals.announced(now);
      }
      if (withoutRefusals.due(now, true)) {
        withoutRefusals.sent(now, true);
        withoutRefusals.handout(true);
        baseline += 1;
      }
    }
    assert.ok(wants <= baseline + haves, `${wants} wants, ${baseline} without, ${haves} haves`);
  });

  it('bounds the wants of a download that stays starved without progress', () => {
    const pacer = new WantPacer(pacing);
    let wants = 0;
    for (let now = 0; now <= 120_000; now += 50) {
      if (pacer.due(now, true)) {
        pacer.sent(now, true);
        pacer.handout(true);
        wants += 1;
      }
    }
    // 0, 1, 3, 7, 15 s, then every 8 s: 18 in two minutes, not 240.
    assert.equal(wants, 18);
  });

  it('waits for the pushed hand-out after one that named no holder', () => {
    const pacer = new WantPacer(pacing);
    pacer.sent(0);
    pacer.handout(false);
    assert.equal(pacer.waiting, true);
    assert.equal(pacer.due(15_999, true), false);
    assert.equal(pacer.due(16_000, true), true);
    // The push names a holder: the download is paced as usual again.
    pacer.handout(true);
    assert.equal(pacer.waiting, false);
    assert.equal(pacer.due(1000, false), false);
    assert.equal(pacer.due(1000, true), true);
  });
});
