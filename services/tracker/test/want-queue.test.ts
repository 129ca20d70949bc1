import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { CoalescingQueue } from '../src/wants/queue.js';

describe('coalescing want queue', () => {
  it('keeps one item per key, the latest, in the turn of the first', () => {
    const queue = new CoalescingQueue<string>(10);
    assert.deepEqual(queue.offer('blob1 a', 'a1'), { outcome: 'queued' });
    assert.deepEqual(queue.offer('blob1 b', 'b1'), { outcome: 'queued' });
    assert.deepEqual(queue.offer('blob1 a', 'a2'), { outcome: 'replaced', replaced: 'a1' });
    assert.deepEqual(queue.offer('blob1 a', 'a3'), { outcome: 'replaced', replaced: 'a2' });
    assert.deepEqual(queue.offer('blob2 a', 'a-other-blob'), { outcome: 'queued' });
    assert.equal(queue.size, 3);
    assert.equal(queue.take(), 'a3');
    assert.equal(queue.take(), 'b1');
    assert.equal(queue.take(), 'a-other-blob');
    assert.equal(queue.take(), undefined);
    // Taken, the key is free again: a later want queues at the back.
    assert.deepEqual(queue.offer('blob1 a', 'a4'), { outcome: 'queued' });
  });

  it('never holds more keys than its capacity, but always takes a replacement', () => {
    const queue = new CoalescingQueue<number>(2);
    assert.equal(queue.offer('x', 1).outcome, 'queued');
    assert.equal(queue.offer('y', 2).outcome, 'queued');
    assert.deepEqual(queue.offer('z', 3), { outcome: 'full' });
    assert.deepEqual(queue.offer('x', 4), { outcome: 'replaced', replaced: 1 });
    assert.equal(queue.size, 2);
    // A backlog of any length of repeated wants stays at one entry per key.
    for (let i = 0; i < 10_000; i += 1) {
      queue.offer(i % 2 === 0 ? 'x' : 'y', i);
    }
    assert.equal(queue.size, 2);
    assert.deepEqual(queue.takeAll(), [9998, 9999]);
    assert.equal(queue.size, 0);
  });

  it('wakes a waiter when an item comes or room is made', async () => {
    const queue = new CoalescingQueue<string>(1);
    const never = new AbortController().signal;
    let woke = false;
    const item = queue.whenItem(never).then(() => {
      woke = true;
    });
    await Promise.resolve();
    assert.equal(woke, false);
    queue.offer('k', 'v');
    await item;
    assert.equal(woke, true);

    let room = false;
    const space = queue.whenSpace(never).then(() => {
      room = true;
    });
    await Promise.resolve();
    assert.equal(room, false);
    assert.equal(queue.take(), 'v');
    await space;
    assert.equal(room, true);
  });

  it('stops waiting when its signal aborts', async () => {
    const queue = new CoalescingQueue<string>(1);
    const stop = new AbortController();
    const waiting = queue.whenItem(stop.signal);
    stop.abort();
    await waiting;
    assert.equal(queue.size, 0);
    // Already aborted: resolves at once.
    await queue.whenItem(stop.signal);
  });
});
