/**
 * The one error type adapter loading throws. `code` lets the HTTP layer answer 400 with a stable reason while the
 * message tells the adapter's author which file, field or tensor is wrong and what was expected.
 */

export type AdapterErrorCode =
  /** adapter_config.json is malformed or a field has an invalid value. */
  | 'invalid_config'
  /** A file format or adapter type this gateway does not read (pickled weights, PEFT types other than LoRA). */
  | 'unsupported_format'
  /** A LoRA option that would change the base model's computation or weights (DoRA, PiSSA, modules_to_save, ...). */
  | 'unsupported_feature'
  /** A required file is absent from the adapter directory. */
  | 'missing_file'
  /** A file exists but cannot be read as what it claims to be (e.g. a corrupt safetensors header). */
  | 'corrupt_file'
  /** A tensor the config requires is absent from the weights. */
  | 'missing_tensor'
  /** A tensor is present but not understood, duplicated, or of an unusable dtype. */
  | 'invalid_tensor'
  /** A tensor's shape disagrees with the base model and the configured rank. */
  | 'shape_mismatch'
  /** A tensor holds NaN or infinity. */
  | 'non_finite'
  /** The adapter was made for a different model (layers or modules this base does not have). */
  | 'incompatible_base';

export class AdapterError extends Error {
  readonly code: AdapterErrorCode;

  constructor(code: AdapterErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'AdapterError';
    this.code = code;
  }
}
