/**
 * A GET that reaches HTTPS services whose certificate comes from the test's own CA (which
 * `fetch` cannot be told to trust without an extra package), and plain HTTP alike.
 */
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';

export interface GetTextOptions {
  /** PEM CA to trust for an `https://` URL (default: the system's). */
  readonly ca?: Buffer | string;
  /** A client certificate and key (PEM) to show, for servers that verify clients. */
  readonly cert?: Buffer | string;
  readonly key?: Buffer | string;
  readonly headers?: Readonly<Record<string, string>>;
  readonly timeoutMs?: number;
}

/**
 * The status and body (as UTF-8 text and as bytes) of a GET; rejects on a connection or TLS
 * error, or after the timeout.
 */
export function getText(
  url: string,
  options: GetTextOptions = {},
): Promise<{ status: number; body: string; bytes: Buffer }> {
  const https = url.startsWith('https:');
  const request = https ? httpsRequest : httpRequest;
  return new Promise((resolve, reject) => {
    const req = request(
      url,
      {
        headers: { ...options.headers },
        ...(https
          ? {
              ...(options.ca === undefined ? {} : { ca: options.ca }),
              ...(options.cert === undefined ? {} : { cert: options.cert }),
              ...(options.key === undefined ? {} : { key: options.key }),
            }
          : {}),
        signal: AbortSignal.timeout(options.timeoutMs ?? 10_000),
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('end', () => {
          const bytes = Buffer.concat(chunks);
          resolve({ status: res.statusCode ?? 0, body: bytes.toString('utf8'), bytes });
        });
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end();
  });
}
