/**
 * Webhook authentication: a shared secret as a bearer token, or an HMAC-SHA256 signature of
 * the body for senders that sign. Comparisons take constant time.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';

/** The header a signing sender puts its signature in: `sha256=<hex>`. */
export const SIGNATURE_HEADER = 'x-shoal-signature-256';

export interface WebhookSecrets {
  readonly token: string | undefined;
  readonly hmacSecret: string | undefined;
}

/** Why a request is not authenticated, or undefined when it is. */
export function refuseWebhook(
  headers: Readonly<Record<string, string | string[] | undefined>>,
  body: Buffer,
  secrets: WebhookSecrets,
): string | undefined {
  const signature = single(headers[SIGNATURE_HEADER]);
  if (signature !== undefined) {
    if (secrets.hmacSecret === undefined) {
      return 'signed requests are not configured (no HMAC secret)';
    }
    const expected = `sha256=${createHmac('sha256', secrets.hmacSecret).update(body).digest('hex')}`;
    return sameText(signature, expected) ? undefined : 'the signature does not match the body';
  }
  const authorization = single(headers.authorization);
  if (authorization === undefined) {
    return secrets.token === undefined
      ? `missing ${SIGNATURE_HEADER}`
      : 'missing Authorization: Bearer <token>';
  }
  if (secrets.token === undefined) {
    return `bearer tokens are not configured; sign with ${SIGNATURE_HEADER}`;
  }
  const match = /^Bearer\s+(.+)$/i.exec(authorization.trim());
  if (match?.[1] === undefined) {
    return 'Authorization is not a bearer token';
  }
  return sameText(match[1], secrets.token) ? undefined : 'wrong token';
}

function single(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

/** Compares secrets without leaking where they differ. */
export function sameText(given: string, expected: string): boolean {
  const a = Buffer.from(given);
  const b = Buffer.from(expected);
  return a.length === b.length && timingSafeEqual(a, b);
}
