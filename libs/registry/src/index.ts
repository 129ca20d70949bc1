/** @shoal/registry: talking to OCI registries (the origin) over HTTP. */
export {
  DEFAULT_USER_AGENT,
  headerValue,
  isUnreachable,
  readAnswer,
  readLimited,
  UpstreamAnswerError,
  UpstreamClient,
  StorageRefusedError,
  UpstreamTimeoutError,
  type UpstreamAnswer,
  type UpstreamRequest,
  type UpstreamResponse,
  type UpstreamTimeouts,
} from './client.js';
export {
  canonicalRegistryHost,
  registriesList,
  registryUrl,
  type UpstreamRegistry,
} from './registries.js';
export {
  loadDockerConfig,
  mayReceiveBasic,
  parseChallenge,
  parseDockerConfig,
  RealmError,
  refusalAdvice,
  RegistryAuth,
  trustedRealmsList,
  type AuthRefusal,
  type BasicCredentials,
  type CredentialSettings,
  type RegistryAuthOptions,
} from './credentials.js';
export { RegistryReader, type ReaderResponse } from './reader.js';
export {
  BLOB_BLOCK_BYTES,
  BLOB_HOLD_MS,
  BlobReader,
  blobRangeHeader,
  type BlobAuth,
  type BlobReaderOptions,
  type OpenedBlob,
} from './blob-reader.js';
export {
  ORIGIN_RESUMES,
  ResumeRefusedError,
  resumingBody,
  type Reopen,
  type ResumeOptions,
  type ResumingBody,
} from './resume.js';
export {
  heldAnswer,
  MAX_HOLD_MS,
  RateLimitHolds,
  retryAfterMs,
  type HeldLimit,
  type LimitedRequest,
  type LimitHeaders,
  type RateLimitHoldsOptions,
  type RegistryRequestKind,
} from './rate-limit-hold.js';
