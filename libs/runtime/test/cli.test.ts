import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { CliError, parseCliArgs, unreachableReason, USAGE_EXIT } from '../src/cli.js';

const options = { url: { type: 'string' }, json: { type: 'boolean' } } as const;

function usageMessage(args: string[]): string {
  try {
    parseCliArgs('tool', { args, options, allowPositionals: false });
  } catch (error) {
    assert.ok(error instanceof CliError);
    assert.equal(error.exitCode, USAGE_EXIT);
    return error.message;
  }
  assert.fail('parsed');
}

describe('CLI helpers', () => {
  it('words parse errors for a person, in one line', () => {
    assert.equal(usageMessage(['--nope']), 'unknown option --nope (tool --help lists the options)');
    assert.equal(
      usageMessage(['--url']),
      'option --url needs a value (tool --help lists the options)',
    );
    assert.equal(
      usageMessage(['extra']),
      'unexpected argument extra (tool --help lists the options)',
    );
  });

  it('names why a request got no answer', () => {
    assert.equal(unreachableReason(new DOMException('late', 'TimeoutError')), 'no answer in time');
    assert.equal(
      unreachableReason(new TypeError('fetch failed', { cause: { code: 'ECONNREFUSED' } })),
      'ECONNREFUSED',
    );
    assert.equal(
      unreachableReason(new TypeError('fetch failed', { cause: new Error('bad port') })),
      'bad port',
    );
  });
});
