/** The authorization check at the registry: a HEAD of the requested path, as the client. */
import { randomBytes } from 'node:crypto';

import { digestOf, parseDigest } from '@shoal/proto';
import {
  readAnswer,
  StorageRefusedError,
  type UpstreamAnswer,
  type UpstreamResponse,
} from '@shoal/registry';

import type { RegistryRequests } from '../upstream/registry-requests.js';
import type { AuthzProbe, AuthzSubject } from './authorizer.js';

const REDIRECTS = new Set([301, 302, 303, 307, 308]);
/** Largest manifest read to check a redirect leads to it, in bytes. */
const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;

/**
 * A probe that HEADs `/v2/<repository>/{blobs,manifests}/<digest>` at the registry with the
 * client's own Authorization header: a 2xx means the registry would serve this client this
 * content. A HEAD moves no content and is not counted against pull rate limits.
 *
 * A redirect says less: registries send authorized requests to their storage that way after
 * checking the content is there, but some redirect every request whatever they hold
 * (registry.k8s.io, to a backend that checks), and a login proxy redirects anyone to a page that
 * answers 200. So the content is then looked for where the redirect leads, redirects followed
 * as for a pull, the credentials never carried to another origin:
 * - a manifest must be there and match its digest;
 * - a blob's first byte must be there (a GET with `Range: bytes=0-0`, as storage URLs are
 *   often signed for GET only): a 206 of `bytes 0-0/<size>`, not a web page, of the blob's
 *   size when the node knows it; and the same look for a digest nothing holds must find
 *   nothing, or where the redirects lead answers whatever is asked (a sign-in page served by a
 *   file server that honours ranges). Even then the yes is the size shown (`shownSize`): it
 *   holds for the request, for a blob of that size, and is not remembered.
 * That answer is the probe's; when the content is not found there, the redirect itself is
 * (the authorizer then has the content read from the registry, never from what the node
 * holds). A 429 from the registry itself is the probe's answer too (the authorizer takes it
 * as the registry not answering); one from another origin counts as the content not found.
 */
export function registryProbe(requests: RegistryRequests): AuthzProbe {
  return async (subject, signal) => {
    const first = await probeOnce(requests, subject, signal);
    if (first.shownSize === undefined) {
      return first.answer;
    }
    // Found through a redirect: the control, a digest nothing holds, in the same repository,
    // looked for whatever its size.
    const control = await probeOnce(
      requests,
      {
        registry: subject.registry,
        repository: subject.repository,
        kind: subject.kind,
        digest: parseDigest(`sha256:${randomBytes(32).toString('hex')}`),
        authorization: subject.authorization,
      },
      signal,
    );
    if (control.answer.status === 429) {
      return control.answer;
    }
    if (control.answer.status >= 200 && control.answer.status < 300) {
      // It answers for anything: what it showed says nothing of this blob.
      return first.redirect ?? first.answer;
    }
    return { ...first.answer, shownSize: first.shownSize };
  };
}

/**
 * The registry's answer to one HEAD, the content looked for where a redirect leads; and for a
 * blob found there, the size shown and the redirect that led there.
 */
async function probeOnce(
  requests: RegistryRequests,
  subject: AuthzSubject,
  signal: AbortSignal,
): Promise<{ answer: UpstreamAnswer; shownSize?: number; redirect?: UpstreamAnswer }> {
  const path = probePath(subject);
  const response = await requests.send({
    registry: subject.registry,
    method: 'HEAD',
    kind: subject.kind,
    path,
    headers: {
      authorization: subject.authorization,
      ...(subject.kind === 'manifest' ? { accept: MANIFEST_TYPES } : {}),
    },
    signal,
    redirects: 'manual',
  });
  const redirect = await readAnswer(response);
  if (!REDIRECTS.has(redirect.status)) {
    return { answer: redirect };
  }
  const found = await lookWhereItLeads(requests, subject, path, signal);
  if (found === undefined) {
    return { answer: redirect };
  }
  return found.shownSize === undefined
    ? { answer: found.answer }
    : { answer: found.answer, shownSize: found.shownSize, redirect };
}

/**
 * The content looked for through the registry's redirects: a 2xx (or 429) answer, with the
 * size shown for a blob's first byte; or undefined when it is not there. Throws when that
 * cannot be told (no answer in time).
 */
async function lookWhereItLeads(
  requests: RegistryRequests,
  subject: AuthzSubject,
  path: string,
  signal: AbortSignal,
): Promise<{ answer: UpstreamAnswer; shownSize?: number } | undefined> {
  const blob = subject.kind === 'blob';
  let response: UpstreamResponse;
  try {
    response = await requests.send({
      registry: subject.registry,
      method: 'GET',
      kind: subject.kind,
      path,
      headers: {
        authorization: subject.authorization,
        ...(blob ? { range: 'bytes=0-0' } : { accept: MANIFEST_TYPES }),
      },
      signal,
      // A look, not a pull: a hold from an earlier 429 does not answer it (its own 429 does).
      started: true,
    });
  } catch (error) {
    if (
      error instanceof StorageRefusedError ||
      (error instanceof Error && error.cause instanceof StorageRefusedError)
    ) {
      // Where the redirect leads has nothing for this path (or will not say to whom asks).
      return undefined;
    }
    throw error;
  }
  if (response.status === 429) {
    return { answer: await readAnswer(response) };
  }
  if (blob) {
    const shown = firstByteSize(response, subject.size);
    if (shown === undefined) {
      // A 200 to a ranged GET may be the whole content (or a login page): not read.
      response.body.destroy();
      return undefined;
    }
    return { answer: await readAnswer(response), shownSize: shown };
  }
  if (response.status !== 200) {
    response.body.destroy();
    return undefined;
  }
  const manifest = await readUpTo(response, MAX_MANIFEST_BYTES);
  if (
    manifest === undefined ||
    digestOf(manifest, subject.digest.algorithm).toString() !== subject.digest.toString()
  ) {
    return undefined;
  }
  return { answer: { status: 200, headers: response.headers, body: Buffer.alloc(0) } };
}

/**
 * The size of the object whose first byte a ranged GET's answer is, or undefined when it is
 * not the first byte of the blob: it must be a 206 of `bytes 0-0/<size>`, of the blob's own
 * size when the node knows it, and not a web page (a sign-in page served by a file server
 * that honours ranges answers a 206 too).
 */
function firstByteSize(response: UpstreamResponse, size: number | undefined): number | undefined {
  const range = /^bytes 0-0\/(\d+)$/.exec(String(response.headers['content-range'] ?? ''));
  const type = String(response.headers['content-type'] ?? '').toLowerCase();
  if (response.status !== 206 || range === null || type.startsWith('text/html')) {
    return undefined;
  }
  const total = Number(range[1]);
  return Number.isSafeInteger(total) && (size === undefined || total === size) ? total : undefined;
}

/** The whole body, or undefined past `limit` bytes (the rest left unread). */
async function readUpTo(response: UpstreamResponse, limit: number): Promise<Buffer | undefined> {
  const chunks: Buffer[] = [];
  let length = 0;
  for await (const chunk of response.body as AsyncIterable<Buffer>) {
    length += chunk.length;
    if (length > limit) {
      response.body.destroy();
      return undefined;
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

function probePath(subject: AuthzSubject): string {
  const segment = subject.kind === 'blob' ? 'blobs' : 'manifests';
  return `/v2/${subject.repository}/${segment}/${subject.digest.toString()}`;
}

/** Every manifest type a registry may hold, so that a HEAD by digest is never refused for its type. */
const MANIFEST_TYPES = [
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.docker.distribution.manifest.v2+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.docker.distribution.manifest.v1+prettyjws',
  '*/*',
].join(', ');
