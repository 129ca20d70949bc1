/** The authorization check at the registry: a HEAD of the requested path, as the client. */
import { readAnswer } from '@shoal/registry';

import type { RegistryRequests } from '../upstream/registry-requests.js';
import type { AuthzProbe } from './authorizer.js';

/**
 * A probe that HEADs `/v2/<repository>/{blobs,manifests}/<digest>` at the registry with the
 * client's own Authorization header: a 2xx means the registry would serve this client this
 * content, and so does a redirect to its storage, which is not followed (storage URLs are often
 * signed for GET only). A HEAD moves no content and is not counted against pull rate limits.
 */
export function registryProbe(requests: RegistryRequests): AuthzProbe {
  return async (subject, signal) => {
    const segment = subject.kind === 'blob' ? 'blobs' : 'manifests';
    const response = await requests.send({
      registry: subject.registry,
      method: 'HEAD',
      kind: subject.kind,
      path: `/v2/${subject.repository}/${segment}/${subject.digest.toString()}`,
      headers: {
        authorization: subject.authorization,
        ...(subject.kind === 'manifest' ? { accept: MANIFEST_TYPES } : {}),
      },
      signal,
      redirects: 'manual',
    });
    return readAnswer(response);
  };
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
