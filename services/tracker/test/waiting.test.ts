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
