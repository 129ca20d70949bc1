import assert from 'node:assert/strict';
import { mkdtemp, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { createLogger, RateLimiter } from '@shoal/runtime';

import { watchLimits } from '../src/swarm/limits.js';

/** A limiter that records the rates it is given. */
class RecordingLimiter extends RateLimiter {
  readonly rates: number[] = [];

  override setRate(bytesPerSecond: number): void {
    this.rates.push(bytesPerSecond);
    super.setRate(bytesPerSecond);
  }
}

describe('watchLimits', () => {
  let dir: string;
  const logger = createLogger({ service: 'test', level: 'silent' });

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'shoal-limits-'));
  });

  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('applies the file, falls back to the defaults for missing fields, and ignores bad content', async () => {
    const path = join(dir, 'limits.json');
    const upload = new RecordingLimiter(0);
    const download = new RecordingLimiter(0);
    const rejected: string[] = [];
    const watch = watchLimits(
      path,
      {
        upload,
        download,
        defaults: { upload: 7, download: 9 },
        onRejected: (reason) => rejected.push(reason),
      },
      logger,
      60_000,
    );
    try {
      await watch.check();
      assert.deepEqual(upload.rates, [], 'no file: nothing changes');

      await writeFile(path, JSON.stringify({ uploadRateBytes: 1000 }));
      await watch.check();
      assert.deepEqual(upload.rates, [1000]);
      assert.deepEqual(download.rates, [9]);

      await watch.check();
      assert.deepEqual(upload.rates, [1000], 'an unchanged file is not applied again');

      await writeFile(path, '{"uploadRateBytes": -1}');
      await utimes(path, new Date(), new Date(Date.now() + 5000));
      await watch.check();
      assert.deepEqual(upload.rates, [1000], 'an invalid file is ignored');
      assert.deepEqual(rejected, ['invalid'], 'and counted');

      await writeFile(path, '{"uploadRateBytes": 1, "uploadRate": 5}');
      await utimes(path, new Date(), new Date(Date.now() + 7000));
      await watch.check();
      assert.deepEqual(upload.rates, [1000], 'a misspelt field is not applied either');
      assert.deepEqual(rejected, ['invalid', 'invalid']);

      await writeFile(path, JSON.stringify({ uploadRateBytes: 0, downloadRateBytes: 2048 }));
      await utimes(path, new Date(), new Date(Date.now() + 10_000));
      await watch.check();
      assert.deepEqual(upload.rates, [1000, 0]);
      assert.deepEqual(download.rates, [9, 2048]);
      assert.deepEqual(rejected, ['invalid', 'invalid'], 'a good file is not counted');
    } finally {
      watch.stop();
    }
  });
});
