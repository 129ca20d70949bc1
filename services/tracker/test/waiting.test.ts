import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { WaitingAskers } from '../src/handout/waiting.js';

describe('askers waiting for a first holder', () => {
  it('hands back the live askers of a blob once, the latest entry of each', () => {
    const waiting = new WaitingAskers<string>(10, 1_000);
    waiting.add('blob1', 'a', 'a1', 0);
    waiting.add('blob1', 'b', 'b1', 0);
    waiting.add('blob1', 'a', 'a2', 10);
    waiting.add('blob2', 'a', 'a-other-blob', 10);
    assert.equal(waiting.size, 3);
    assert.deepEqual(waiting.take('blob1', 20).sort(), ['a2', 'b1']);
    // Taken: the next holder of the same blob tells nobody again.
    assert.deepEqual(waiting.take('blob1', 30), []);
    assert.deepEqual(waiting.take('blob2', 30), ['a-other-blob']);
    assert.equal(waiting.size, 0);
  });

  it('forgets askers after their time, and the oldest when full', () => {
    const waiting = new WaitingAskers<string>(2, 100);
    waiting.add('blob', 'old', 'old', 0);
    waiting.add('blob', 'mid', 'mid', 50);
    // A third asker pushes the oldest out.
    waiting.add('blob', 'new', 'new', 60);
    assert.equal(waiting.size, 2);
    // At 155, `mid` (until 150) has expired; `new` (until 160) has not.
    assert.deepEqual(waiting.take('blob', 155), ['new']);
    assert.equal(waiting.size, 0);
  });

  it('drops expired askers of blobs that never got a holder', () => {
    const waiting = new WaitingAskers<string>(100_000, 100);
    // A seed that failed every blob of a long run: nobody ever takes these.
    for (let i = 0; i < 50_000; i += 1) {
      waiting.add(`blob-${i}`, 'asker', `w${i}`, i / 100);
    }
    assert.equal(waiting.size, 50_000);
    // At 400, those added before 300 (until before 400) have expired.
    assert.equal(waiting.prune(400), 30_000);
    assert.equal(waiting.size, 20_000);
    assert.deepEqual(waiting.take('blob-29999', 400), []);
    assert.deepEqual(waiting.take('blob-30000', 400), ['w30000']);
    // An asker that asked again is kept: its entry moved to the back.
    waiting.add('blob-30001', 'asker', 'again', 450);
    assert.equal(waiting.prune(10_000), 19_999);
    assert.equal(waiting.size, 0);
    assert.equal(waiting.prune(10_000), 0);
  });

  it("hands back one asker's entry alone, once, and not after its time", () => {
    const table = new WaitingAskers<string>(10, 100);
    table.add('blob', 'a', 'a1', 0);
    table.add('blob', 'b', 'b1', 0);
    assert.equal(table.takeOne('blob', 'a', 50), 'a1');
    assert.equal(table.takeOne('blob', 'a', 50), undefined);
    assert.equal(table.takeOne('other', 'b', 50), undefined);
    assert.equal(table.size, 1);
    assert.equal(table.takeOne('blob', 'b', 101), undefined);
    assert.equal(table.size, 0);
  });
});
