/** A backlog's loop gives the event loop back once its work adds up to a slice. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { EventLoopSlice } from '../src/event-loop-slice.js';

/** True once a `setImmediate` queued now has run. */
function immediateRan(): () => boolean {
  let ran = false;
  setImmediate(() => {
    ran = true;
  });
  return () => ran;
}

describe('EventLoopSlice', () => {
  it('yields once the work time adds up to the slice, then counts again', async () => {
    let clock = 0;
    const slice = new EventLoopSlice(5, () => clock);
    let ran = immediateRan();
    for (let step = 1; step <= 4; step += 1) {
      const startedAt = slice.start();
      clock += 1;
      await slice.after(startedAt);
      assert.equal(ran(), false, `no yield after ${step} ms of work`);
    }
    const startedAt = slice.start();
    clock += 1;
    await slice.after(startedAt);
    assert.equal(ran(), true, 'the fifth millisecond of work yields');

    ran = immediateRan();
    for (let step = 1; step <= 4; step += 1) {
      const began = slice.start();
      clock += 1;
      await slice.after(began);
    }
    assert.equal(ran(), false, 'a new slice starts after a yield');
  });

  it('does not count the waits between steps', async () => {
    let clock = 0;
    const slice = new EventLoopSlice(5, () => clock);
    const ran = immediateRan();
    for (let step = 0; step < 10; step += 1) {
      clock += 100; // waiting for the next item
      const startedAt = slice.start();
      clock += 0.4;
      await slice.after(startedAt);
    }
    assert.equal(ran(), false, '4 ms of work in 1 s of waiting');
  });

  it('yields after one step longer than the slice', async () => {
    let clock = 0;
    const slice = new EventLoopSlice(5, () => clock);
    const ran = immediateRan();
    const startedAt = slice.start();
    clock += 20;
    await slice.after(startedAt);
    assert.equal(ran(), true);
  });
});
