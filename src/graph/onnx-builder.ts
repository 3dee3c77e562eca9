/**
 * A small, typed layer over the ONNX protobuf definitions: enough to write a graph as a sequence of named
 * operations and serialise it. Large initializers are stored as external data so the protobuf itself stays
 * small (protobuf caps a message at 2 GiB) and weights are handed to onnxruntime as one buffer.
 */
import onnxProto from 'onnx-proto';

const { onnx } = onnxProto;

const DataType = onnx.TensorProto.DataType;
export type ElementType = 'float32' | 'int64' | 'uint8' | 'bool';

const ELEMENT_TYPES: Record<ElementType, number> = { float32: DataType.FLOAT, int64: DataType.INT64, uint8: DataType.UINT8, bool: DataType.BOOL };

/** Initializer data and the element type each typed array stores. */
type InitializerData = Float32Array | BigInt64Array | Uint8Array;
function elementTypeOf(data: InitializerData): ElementType {
  return data instanceof Float32Array ? 'float32' : data instanceof BigInt64Array ? 'int64' : 'uint8';
}

/** Dimensions are numbers or symbolic names (dynamic axes). */
export type Dim = number | string;

export type AttributeValue = number | number[] | string | { float: number } | { graph: Branch };

/** A subgraph (an `If` branch): its nodes and the values it returns, all float32. */
export interface Branch {
  nodes: InstanceType<typeof onnx.NodeProto>[];
  outputs: string[];
}

/** Name of the buffer onnxruntime receives through `externalData`; every initializer points into it. */
export const EXTERNAL_DATA_FILE = 'weights.bin';

/** External data offsets are aligned so onnxruntime can map them without unaligned float reads. */
const EXTERNAL_ALIGNMENT = 64;

/** Small constants (shapes, indices) stay inline: shape inference must read them while loading the graph. */
const INLINE_LIMIT = 1024;

/** One operation as it was appended, for passes that read the graph back (the autodiff in src/training/). */
export interface GraphOp {
  opType: string;
  /** Set for operators outside ONNX's own domain (e.g. `com.microsoft`). */
  domain?: string;
  inputs: string[];
  outputs: string[];
  attributes: Record<string, AttributeValue>;
}

/** A graph input or initializer: its element type and dimensions. */
export interface ValueDeclaration {
  type: ElementType;
  dims: Dim[];
}

export interface BuiltModel {
  /** Serialised ModelProto (graph and initializer metadata only). */
  modelBytes: Uint8Array;
  /** The bytes of every initializer, referenced by offset from `modelBytes`. */
  weights: Uint8Array;
}

export class OnnxGraphBuilder {
  private readonly nodes: InstanceType<typeof onnx.NodeProto>[] = [];
  private readonly inputs: InstanceType<typeof onnx.ValueInfoProto>[] = [];
  private readonly outputs: InstanceType<typeof onnx.ValueInfoProto>[] = [];
  private readonly initializers: { name: string; dims: number[]; type: ElementType; bytes: Uint8Array }[] = [];
  private readonly ops: GraphOp[] = [];
  private readonly declarations = new Map<string, ValueDeclaration>();
  private readonly int64Constants = new Map<string, number[]>();
  private readonly usedNames = new Set<string>();
  private counter = 0;

  constructor(private readonly graphName: string) {}

  input(name: string, type: ElementType, dims: Dim[]): string {
    this.claim(name);
    this.inputs.push(valueInfo(name, type, dims));
    this.declarations.set(name, { type, dims });
    return name;
  }

  /** Without `dims`, the output's shape is left for onnxruntime to infer. */
  output(value: string, name: string, type: ElementType, dims?: Dim[]): void {
    this.op('Identity', [value], {}, name);
    this.outputs.push(valueInfo(name, type, dims));
  }

  /**
   * A constant tensor stored in the external weight buffer. The data is referenced, not copied, until `build`
   * copies it into that buffer (a copy per tensor would hold the weights twice while the graph is built), so
   * callers must not change it before then.
   */
  initializer(name: string, data: InitializerData, dims: number[]): string {
    this.claim(name);
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    const type = elementTypeOf(data);
    this.initializers.push({ name, dims, type, bytes });
    this.declarations.set(name, { type, dims });
    return name;
  }

  /**
   * An initializer several parts of the graph read: created by `data()` on first use, then only referenced (a
   * projection applied to more than one input keeps one copy of its weights).
   */
  sharedInitializer(name: string, data: () => InitializerData, dims: number[]): string {
    return this.usedNames.has(name) ? name : this.initializer(name, data(), dims);
  }

  constInt64(values: number[], name = this.fresh('const')): string {
    this.int64Constants.set(name, values);
    return this.initializer(name, BigInt64Array.from(values, BigInt), [values.length]);
  }

  /** A float scalar constant (rank 0), inline in the graph. */
  constFloat(value: number, name = this.fresh('const')): string {
    return this.initializer(name, Float32Array.of(value), []);
  }

  /** The operations appended so far, in order. */
  get operations(): readonly GraphOp[] {
    return this.ops;
  }

  /** Type and dimensions of a graph input or initializer; undefined for values operations compute. */
  declaration(name: string): ValueDeclaration | undefined {
    return this.declarations.get(name);
  }

  /** The values of a constant made by `constInt64`. */
  int64Constant(name: string): number[] | undefined {
    return this.int64Constants.get(name);
  }

  /** Appends one operation and returns the name of its (first) output. */
  op(opType: string, inputs: string[], attributes: Record<string, AttributeValue> = {}, outputName?: string): string {
    return this.opMulti(opType, inputs, 1, attributes, outputName ? [outputName] : undefined)[0];
  }

  /** An operator from another domain than ONNX's own (e.g. onnxruntime's `com.microsoft` contrib operators). */
  domainOp(domain: string, opType: string, inputs: string[], attributes: Record<string, AttributeValue> = {}): string {
    return this.opMulti(opType, inputs, 1, attributes, undefined, domain)[0];
  }

  opMulti(
    opType: string,
    inputs: string[],
    outputCount: number,
    attributes: Record<string, AttributeValue> = {},
    outputNames?: string[],
    domain?: string,
  ): string[] {
    const outputs = outputNames ?? Array.from({ length: outputCount }, () => this.fresh(opType.toLowerCase()));
    for (const name of outputs) this.claim(name);
    this.ops.push({ opType, ...(domain ? { domain } : {}), inputs, outputs, attributes });
    this.nodes.push(
      onnx.NodeProto.create({
        opType,
        ...(domain ? { domain } : {}),
        name: this.fresh(`${opType}_node`),
        input: inputs,
        output: outputs,
        attribute: Object.entries(attributes).map(([key, value]) => attribute(key, value)),
      }),
    );
    return outputs;
  }

  /**
   * `If(condition)`: runs one of two subgraphs, each built by its function from values of this graph (inputs,
   * initializers, earlier results), which it reads without copies. Returns the taken branch's float32 results.
   */
  ifElse(condition: string, thenBranch: () => string[], elseBranch: () => string[]): string[] {
    const [whenTrue, whenFalse] = [this.branch(thenBranch), this.branch(elseBranch)];
    if (whenTrue.outputs.length !== whenFalse.outputs.length) throw new Error('both branches of an If must return as many values');
    return this.opMulti('If', [condition], whenTrue.outputs.length, { then_branch: { graph: whenTrue }, else_branch: { graph: whenFalse } });
  }

  /** A subgraph's nodes; its operations leave `operations` with them, which so stays one entry per top-level node. */
  private branch(build: () => string[]): Branch {
    const [outerNodes, outerOps] = [this.nodes.splice(0), this.ops.splice(0)];
    try {
      const outputs = build();
      this.ops.splice(0);
      return { nodes: this.nodes.splice(0), outputs };
    } finally {
      this.nodes.push(...outerNodes);
      this.ops.push(...outerOps);
    }
  }

  /**
   * Makes a value the operations compute a graph input instead: the operation producing it is dropped, and the
   * caller feeds the value. The training graphs use this to read activations an earlier run saved rather than
   * computing them again.
   */
  feedInstead(value: string, type: ElementType, dims: Dim[]): void {
    const index = this.ops.findIndex((op) => op.outputs.includes(value));
    if (index < 0 || this.ops[index].outputs.length !== 1) throw new Error(`ONNX graph value "${value}" is not the only output of an operation`);
    this.ops.splice(index, 1);
    this.nodes.splice(index, 1);
    this.inputs.push(valueInfo(value, type, dims));
    this.declarations.set(value, { type, dims });
  }

  build(opset: { domain: string; version: number }[]): BuiltModel {
    let size = 0;
    const placed = this.initializers.map((init) => {
      if (init.bytes.byteLength < INLINE_LIMIT) return { init, offset: -1 };
      const offset = Math.ceil(size / EXTERNAL_ALIGNMENT) * EXTERNAL_ALIGNMENT;
      size = offset + init.bytes.byteLength;
      return { init, offset };
    });
    const weights = new Uint8Array(size);
    const initializerProtos = placed.map(({ init, offset }) => {
      if (offset < 0) {
        return onnx.TensorProto.create({ name: init.name, dims: init.dims, dataType: ELEMENT_TYPES[init.type], rawData: init.bytes });
      }
      weights.set(init.bytes, offset);
      return onnx.TensorProto.create({
        name: init.name,
        dims: init.dims,
        dataType: ELEMENT_TYPES[init.type],
        dataLocation: onnx.TensorProto.DataLocation.EXTERNAL,
        externalData: [
          { key: 'location', value: EXTERNAL_DATA_FILE },
          { key: 'offset', value: String(offset) },
          { key: 'length', value: String(init.bytes.byteLength) },
        ],
      });
    });
    const model = onnx.ModelProto.create({
      irVersion: 10,
      producerName: 'peft-gateway',
      opsetImport: opset,
      graph: onnx.GraphProto.create({
        name: this.graphName,
        node: this.nodes,
        input: this.inputs,
        output: this.outputs,
        initializer: initializerProtos,
      }),
    });
    return { modelBytes: onnx.ModelProto.encode(model).finish(), weights };
  }

  private fresh(prefix: string): string {
    let name: string;
    do name = `${prefix}_${this.counter++}`;
    while (this.usedNames.has(name));
    return name;
  }

  private claim(name: string): void {
    if (this.usedNames.has(name)) throw new Error(`ONNX graph value "${name}" is defined twice`);
    this.usedNames.add(name);
  }
}

function valueInfo(name: string, type: ElementType, dims?: Dim[]) {
  const shape = dims && { dim: dims.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) };
  return onnx.ValueInfoProto.create({ name, type: { tensorType: { elemType: ELEMENT_TYPES[type], ...(shape ? { shape } : {}) } } });
}

function attribute(name: string, value: AttributeValue) {
  const { AttributeType } = onnx.AttributeProto;
  if (typeof value === 'string') return { name, type: AttributeType.STRING, s: new TextEncoder().encode(value) };
  if (typeof value === 'number') return { name, type: AttributeType.INT, i: value };
  if (Array.isArray(value)) return { name, type: AttributeType.INTS, ints: value };
  if ('float' in value) return { name, type: AttributeType.FLOAT, f: value.float };
  const { nodes, outputs } = value.graph;
  return { name, type: AttributeType.GRAPH, g: onnx.GraphProto.create({ name, node: nodes, output: outputs.map((output) => valueInfo(output, 'float32')) }) };
}
