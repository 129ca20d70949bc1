/** A login proxy's own pages, as the authorization tests' proxies serve them. */
import type { IncomingMessage, ServerResponse } from 'node:http';

/**
 * Answers what a login proxy answers for itself: the API version check (`/v2/`, 200) and its
 * sign-in page at `/login`, served as a file server serves it, ranges honoured (a 206 of the
 * first byte to `Range: bytes=0-0`). True when it answered; else the request is the caller's.
 */
export function answerSignIn(
  req: IncomingMessage,
  res: ServerResponse,
  page: Buffer,
  contentType: string,
): boolean {
  const url = req.url ?? '/';
  if (url === '/v2/' || url === '/v2') {
    res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    return true;
  }
  if (url !== '/login') {
    return false;
  }
  if (req.headers.range === 'bytes=0-0') {
    res.writeHead(206, {
      'content-type': contentType,
      'content-range': `bytes 0-0/${String(page.length)}`,
      'content-length': 1,
    });
    res.end(page.subarray(0, 1));
    return true;
  }
  res.writeHead(200, { 'content-type': contentType, 'content-length': page.length });
  res.end(req.method === 'HEAD' ? undefined : page);
  return true;
}
