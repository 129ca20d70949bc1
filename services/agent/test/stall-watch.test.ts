import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { StallWatch } from '../src/swarm/stall-watch.js';

/** A watch with a 10 s timeout on a clock the test moves. */
function watch(): { stall: StallWatch; clock: { ms: number } } {
  const clock = { ms: 1_000_000 };
  return { stall: new StallWatch(10_000, () => clock.ms), clock };
}

describe('StallWatch', () => {
  it('says stalled once nothing has moved for longer than the timeout', () => {
    const { stall, clock } = watch();
    clock.ms += 10_000;
    assert.equal(stall.stalled(), false, 'at the timeout itself');
    assert.equal(stall.deadlineMs, clock.ms + 1);
    clock.ms += 1;
    assert.equal(stall.stalled(), true);
  });

  it('counts bytes of a piece not yet whole as progress, as a slow link brings them', () => {
    const { stall, clock } = watch();
    // A 1 MiB piece at 32 KiB/s takes 32 s: 8 KiB every quarter of a second, no piece held.
    for (let t = 0; t < 32_000; t += 250) {
      clock.ms += 250;
      stall.received(8 * 1024);
      assert.equal(stall.stalled(), false, `at ${t + 250} ms`);
    }
    // Then silence: stalled a timeout after the last byte.
    clock.ms += 10_000;
    assert.equal(stall.stalled(), false);
    clock.ms += 1;
    assert.equal(stall.stalled(), true);
  });

  it('does not count an empty read, and does count a piece held or a hash heard', () => {
    const { stall, clock } = watch();
    clock.ms += 9_000;
    stall.received(0);
    clock.ms += 1_001;
    assert.equal(stall.stalled(), true, 'no bytes: no progress');
    stall.progress();
    clock.ms += 10_000;
    assert.equal(stall.stalled(), false);
  });

  it('leaves time spent waiting for the download budget out of the stall', () => {
    const { stall, clock } = watch();
    clock.ms += 8_000;
    // Six seconds waiting for the operator's rate limit.
    stall.exclude(6_000);
    clock.ms += 7_000;
    assert.equal(stall.stalled(), false, '15 s in, 6 of them waiting on the budget');
    assert.equal(stall.deadlineMs, 1_000_000 + 16_000 + 1);
    clock.ms += 1_001;
    assert.equal(stall.stalled(), true);
  });

  it('with a rate floor, a trickle of bytes does not hold the stall off', () => {
    const clock = { ms: 1_000_000 };
    // Floor 16 KiB/s: a byte buys 1/16384 s of waiting.
    const stall = new StallWatch(10_000, () => clock.ms, 16 * 1024);
    // A peer sending one byte every 300 ms, handed out again after each give-up.
    let t = 0;
    while (!stall.stalled() && t < 60_000) {
      clock.ms += 300;
      t += 300;
      stall.received(1);
    }
    assert.equal(stall.stalled(), true, 'stalled despite the trickle');
    assert.ok(t > 10_000 && t <= 10_500, `stalled ${t} ms in, about the timeout`);
  });

  it('with a rate floor, a slow link above it never stalls and silence still does', () => {
    const clock = { ms: 1_000_000 };
    const stall = new StallWatch(10_000, () => clock.ms, 16 * 1024);
    // 32 KiB/s, twice the floor, for two minutes: no piece whole for 32 s at a time.
    for (let t = 0; t < 120_000; t += 250) {
      clock.ms += 250;
      stall.received(8 * 1024);
      assert.equal(stall.stalled(), false, `at ${t + 250} ms`);
    }
    clock.ms += 10_001;
    assert.equal(stall.stalled(), true, 'a timeout of silence after the last byte');
  });
});
