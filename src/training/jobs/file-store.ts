/**
 * Uploaded training files, per tenant, in the training directory. A file is validated as a fine-tuning dataset
 * before it is stored (every line, see jsonl-examples.ts), so a job never starts on a file that cannot be read.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { readJsonIfPresent } from '../../storage/json-files.ts';
import { parseTrainingJsonl, type TrainingFormat } from '../data/jsonl-examples.ts';
import { newestFirst, newId, type TrainingDir } from './training-dir.ts';

const META_FILE = 'file.json';
const CONTENT_FILE = 'content.jsonl';

/** OpenAI's file object, plus what validation learnt about the dataset. */
export interface StoredFile {
  object: 'file';
  id: string;
  bytes: number;
  created_at: number;
  filename: string;
  purpose: 'fine-tune';
  status: 'processed';
  status_details: null;
  expires_at: null;
  /** The owning tenant (OpenAI's files carry no owner field; this one is not shown to tenants). */
  tenant: string;
  examples: number;
  format: TrainingFormat;
}

export class TrainingFileStore {
  constructor(private readonly dir: TrainingDir) {}

  /** Validates and stores a file; throws DatasetError (naming the lines) when it is not a valid dataset. */
  async create(tenant: string, filename: string, content: Uint8Array): Promise<StoredFile> {
    let text: string;
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(content);
    } catch {
      throw new TypeError('the file is not UTF-8 text');
    }
    const examples = parseTrainingJsonl(text, 1);
    const file: StoredFile = {
      object: 'file',
      id: newId('file'),
      bytes: content.byteLength,
      created_at: Math.floor(Date.now() / 1000),
      filename,
      purpose: 'fine-tune',
      status: 'processed',
      status_details: null,
      expires_at: null,
      tenant,
      examples: examples.length,
      format: examples[0].format,
    };
    await this.dir.createDirectory(this.dir.fileDir(tenant, file.id), {
      [CONTENT_FILE]: content,
      [META_FILE]: JSON.stringify(file) + '\n',
    });
    return file;
  }

  tenants(): Promise<string[]> {
    return this.dir.tenants();
  }

  async get(tenant: string, id: string): Promise<StoredFile | null> {
    return ((await readJsonIfPresent(join(this.dir.fileDir(tenant, id), META_FILE))) as StoredFile | undefined) ?? null;
  }

  async content(file: StoredFile): Promise<string> {
    return readFile(join(this.dir.fileDir(file.tenant, file.id), CONTENT_FILE), 'utf8');
  }

  /** The tenant's files, newest first. */
  async list(tenant: string): Promise<StoredFile[]> {
    const ids = await readdir(this.dir.tenantDir(tenant, 'files')).catch(() => [] as string[]);
    const files = await Promise.all(ids.map((id) => this.get(tenant, id).catch(() => null)));
    return files.filter((file): file is StoredFile => file !== null).sort(newestFirst);
  }

  async remove(file: StoredFile): Promise<void> {
    await this.dir.removeDirectory(this.dir.fileDir(file.tenant, file.id));
  }

  async bytesUsed(tenant: string): Promise<number> {
    return (await this.list(tenant)).reduce((sum, file) => sum + file.bytes, 0);
  }
}
