import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { FailureNotes } from '../src/seeding/failures.js';

describe('FailureNotes', () => {
  it('keeps the latest note per blob, and forgets a blob seeded since', () => {
    const notes = new FailureNotes();
    notes.set('a', 'origin answered 502');
    notes.set('a', 'no room on the cache disk');
    assert.equal(notes.get('a'), 'no room on the cache disk');
    assert.equal(notes.size, 1);
    notes.delete('a');
    assert.equal(notes.get('a'), undefined);
  });

  it('stays within its capacity under a flood of failing blobs, the oldest out first', () => {
    const notes = new FailureNotes(100);
    notes.set('kept', 'first');
    for (let i = 0; i < 50_000; i += 1) {
      notes.set(`made-up-${i}`, 'origin answered 404');
      if (i % 50 === 0) {
        // Failing again moves a note to the back.
        notes.set('kept', 'again');
      }
    }
    assert.equal(notes.size, 100);
    assert.equal(notes.get('kept'), 'again');
    assert.equal(notes.get('made-up-49999'), 'origin answered 404');
    assert.equal(notes.get('made-up-0'), undefined);
  });
});
