import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { describe, it } from 'node:test';

import { refuseWebhook, sameText, SIGNATURE_HEADER } from '../src/webhooks/auth.js';

const TOKEN = 'webhook-token-0123456789';
const HMAC_SECRET = 'webhook-hmac-secret-0123456789';
const BODY = Buffer.from('{"events":[{"id":"1","action":"push"}]}');

function signature(body: Buffer, secret = HMAC_SECRET): string {
  return `sha256=${createHmac('sha256', secret).update(body).digest('hex')}`;
}

describe('webhook authentication', () => {
  describe('with a bearer token configured', () => {
    const secrets = { token: TOKEN, hmacSecret: undefined };

    it('accepts the token', () => {
      assert.equal(refuseWebhook({ authorization: `Bearer ${TOKEN}` }, BODY, secrets), undefined);
      // The scheme is case-insensitive, and surrounding space is not part of the token.
      assert.equal(refuseWebhook({ authorization: `bearer  ${TOKEN} ` }, BODY, secrets), undefined);
      // Node gives repeated headers as an array; the first one counts.
      assert.equal(
        refuseWebhook({ authorization: [`Bearer ${TOKEN}`, 'Bearer other'] }, BODY, secrets),
        undefined,
      );
    });

    it('refuses a wrong token, including one that only shares a prefix', () => {
      assert.equal(
        refuseWebhook({ authorization: 'Bearer not-the-token-at-all' }, BODY, secrets),
        'wrong token',
      );
      assert.equal(
        refuseWebhook({ authorization: `Bearer ${TOKEN}x` }, BODY, secrets),
        'wrong token',
      );
      assert.equal(
        refuseWebhook({ authorization: `Bearer ${TOKEN.slice(0, -1)}` }, BODY, secrets),
        'wrong token',
      );
    });

    it('refuses a request without credentials', () => {
      assert.equal(refuseWebhook({}, BODY, secrets), 'missing Authorization: Bearer <token>');
    });

    it('refuses credentials that are not a bearer token', () => {
      const basic = `Basic ${Buffer.from(`user:${TOKEN}`).toString('base64')}`;
      assert.equal(
        refuseWebhook({ authorization: basic }, BODY, secrets),
        'Authorization is not a bearer token',
      );
      assert.equal(
        refuseWebhook({ authorization: 'Bearer' }, BODY, secrets),
        'Authorization is not a bearer token',
      );
    });

    it('refuses a signed request when no HMAC secret is configured', () => {
      assert.equal(
        refuseWebhook(
          { [SIGNATURE_HEADER]: signature(BODY), authorization: `Bearer ${TOKEN}` },
          BODY,
          secrets,
        ),
        'signed requests are not configured (no HMAC secret)',
      );
    });
  });

  describe('with an HMAC secret configured', () => {
    const secrets = { token: undefined, hmacSecret: HMAC_SECRET };

    it('accepts the signature of the body', () => {
      assert.equal(
        refuseWebhook({ [SIGNATURE_HEADER]: signature(BODY) }, BODY, secrets),
        undefined,
      );
    });

    it('refuses a wrong signature, or one over a different body', () => {
      assert.equal(
        refuseWebhook({ [SIGNATURE_HEADER]: signature(BODY, 'another-secret') }, BODY, secrets),
        'the signature does not match the body',
      );
      assert.equal(
        refuseWebhook(
          { [SIGNATURE_HEADER]: signature(Buffer.from('{"events":[]}')) },
          BODY,
          secrets,
        ),
        'the signature does not match the body',
      );
      assert.equal(
        refuseWebhook(
          { [SIGNATURE_HEADER]: signature(BODY).replace('sha256=', '') },
          BODY,
          secrets,
        ),
        'the signature does not match the body',
      );
    });

    it('refuses an unsigned request, naming the signature header', () => {
      assert.equal(refuseWebhook({}, BODY, secrets), `missing ${SIGNATURE_HEADER}`);
    });

    it('refuses a bearer token when only HMAC is configured', () => {
      assert.equal(
        refuseWebhook({ authorization: `Bearer ${TOKEN}` }, BODY, secrets),
        `bearer tokens are not configured; sign with ${SIGNATURE_HEADER}`,
      );
    });

    it('judges a signed request by its signature even when a token is sent too', () => {
      const both = { token: TOKEN, hmacSecret: HMAC_SECRET };
      assert.equal(
        refuseWebhook(
          { [SIGNATURE_HEADER]: 'sha256=00', authorization: `Bearer ${TOKEN}` },
          BODY,
          both,
        ),
        'the signature does not match the body',
      );
      assert.equal(refuseWebhook({ authorization: `Bearer ${TOKEN}` }, BODY, both), undefined);
    });
  });

  it('compares texts of different lengths without throwing', () => {
    assert.equal(sameText('abc', 'abc'), true);
    assert.equal(sameText('abc', 'abd'), false);
    assert.equal(sameText('abc', 'abcd'), false);
    assert.equal(sameText('', ''), true);
  });
});
