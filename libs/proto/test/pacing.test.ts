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
  it('announces as the held pieces double, and once complete', () => {
    assert.deepEqual(havesOneByOne(256), [1, 2, 4, 8, 16, 32, 64, 128, 256]);
    assert.deepEqual(havesOneByOne(300), [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]);
    assert.deepEqual(havesOneByOne(1), [1]);
  });

  it('sends at most log2(total) + 2 haves whatever the order pieces come in', () => {
    for (const total of [1, 7, 256, 1000, 4096]) {
      assert.ok(havesOneByOne(total).length <= Math.ceil(Math.log2(total)) + 2, String(total));
    }
  });

  it('announces losing every piece, and nothing twice', () => {
    assert.equal(haveDue(40, 0, 256), true);
    assert.equal(haveDue(0, 0, 256), false);
    assert.equal(haveDue(256, 256, 256), false);
    assert.equal(haveDue(128, 200, 256), false);
    assert.equal(haveDue(128, 256, 256), true);
  });
});

describe('want pacing', () => {
  const pacing = wantPacing(500);

  it('asks at once, then backs off while known holders still have something to give', () => {
    const pacer = new WantPacer(pacing);
    const sent: number[] = [];
    for (let now = 0; now <= 60_000; now += 50) {
      if (pacer.due(now, false)) {
        pacer.sent(now);
        pacer.handout(true);
        sent.push(now);
      }
    }
    // Gaps 1, 2, 4, 8 s, then 8 s: a minute costs 10 wants, not 120.
    assert.deepEqual(sent.slice(0, 5), [0, 1000, 3000, 7000, 15_000]);
    assert.equal(sent.length, 10);
  });

  it('asks again after the base interval while starved, later each time without progress', () => {
    const pacer = new WantPacer(pacing);
    pacer.sent(0);
    pacer.handout(true);
    pacer.sent(1000);
    assert.equal(pacer.due(1400, true), false);
    assert.equal(pacer.due(1500, true), true);
    assert.equal(pacer.due(1500, false), false);
    assert.equal(pacer.nextDueMs(1400, true), 1500);
    // Starved again and again with no new piece: 0.5 s, then 1 s, then 2 s.
    pacer.sent(1500, true);
    assert.equal(pacer.due(2400, true), false);
    assert.equal(pacer.due(2500, true), true);
    pacer.sent(2500, true);
    assert.equal(pacer.due(4400, true), false);
    assert.equal(pacer.due(4500, true), true);
    // New pieces came (a have went out): starved, it asks after the base interval again.
    pacer.progressed();
    assert.equal(pacer.due(3000, true), true);
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
    assert.equal(pacer.due(1000, false), true);
  });
});
