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

interface InitializerRecord {
  name: string;
  dims: number[];
  type: ElementType;
  bytes: Uint8Array;
}

function initializerRecord(name: string, data: InitializerData, dims: number[]): InitializerRecord {
  return { name, dims, type: elementTypeOf(data), bytes: new Uint8Array(data.buffer, data.byteOffset, data.byteLength) };
}

/**
 * The `sharedInitializer`s of graphs built together (`OnnxGraphBuilder.buildTogether`): each is made once, whichever
 * graph asks first, and stored once in their common weight buffer, however many of the graphs read it.
 */
export class SharedInitializers {
  readonly records = new Map<string, InitializerRecord>();
}

export class OnnxGraphBuilder {
  private readonly nodes: InstanceType<typeof onnx.NodeProto>[] = [];
  private readonly inputs: InstanceType<typeof onnx.ValueInfoProto>[] = [];
  private readonly outputs: InstanceType<typeof onnx.ValueInfoProto>[] = [];
  private readonly shapes: InstanceType<typeof onnx.ValueInfoProto>[] = [];
  private readonly initializers: InitializerRecord[] = [];
  private readonly ops: GraphOp[] = [];
  private readonly declarations = new Map<string, ValueDeclaration>();
  private readonly int64Constants = new Map<string, number[]>();
  private readonly usedNames = new Set<string>();
  private counter = 0;

  /** `shared`: the store of shared initializers, when this graph is built together with others. */
  constructor(
    private readonly graphName: string,
    private readonly shared = new SharedInitializers(),
  ) {}

  input(name: string, type: ElementType, dims: Dim[]): string {
    this.claim(name);
    this.inputs.push(valueInfo(name, type, dims));
    this.declarations.set(name, { type, dims });
    return name;
  }

  /**
   * Declares the shape of a value the operations compute (a `value_info`), for axes that shape inference cannot
   * name (a Reshape's -1, a broadcast between two symbolic axes). Returns the value. onnxruntime's memory planner
   * never reuses the buffer of a value with an unnamed axis, yet compares every value it plans against each such
   * buffer freed before it: on SmolLM2-135M's shape, undeclared, planning the adapter graph took 2.5 s and the
   * mixed graph 0.7 s of session creation (0.2 and 0.1 s declared).
   */
  declareShape(value: string, type: ElementType, dims: Dim[]): string {
    this.shapes.push(valueInfo(value, type, dims));
    return value;
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
    return this.addInitializer(initializerRecord(name, data, dims));
  }

  /**
   * An initializer several parts of the graph, or several graphs built together, read: created by `data()` on
   * first use, then only referenced (a projection applied to more than one input keeps one copy of its weights).
   */
  sharedInitializer(name: string, data: () => InitializerData, dims: number[]): string {
    if (this.usedNames.has(name)) return name;
    let record = this.shared.records.get(name);
    if (!record) {
      record = initializerRecord(name, data(), dims);
      this.shared.records.set(name, record);
    }
    return this.addInitializer(record);
  }

  private addInitializer(record: InitializerRecord): string {
    this.claim(record.name);
    this.initializers.push(record);
    this.declarations.set(record.name, { type: record.type, dims: record.dims });
    return record.name;
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
    const { models, weights } = OnnxGraphBuilder.buildTogether([this], opset);
    return { modelBytes: models[0], weights };
  }

  /**
   * Serialises graphs into one weight buffer that all of them reference: an initializer they share
   * (`SharedInitializers`) is stored in it once, so sessions of all the graphs can load from one copy of the bytes.
   */
  static buildTogether(graphs: OnnxGraphBuilder[], opset: { domain: string; version: number }[]): { models: Uint8Array[]; weights: Uint8Array } {
    const offsets = new Map<InitializerRecord, number>();
    let size = 0;
    for (const init of graphs.flatMap((graph) => graph.initializers)) {
      if (init.bytes.byteLength < INLINE_LIMIT || offsets.has(init)) continue;
      const offset = Math.ceil(size / EXTERNAL_ALIGNMENT) * EXTERNAL_ALIGNMENT;
      offsets.set(init, offset);
      size = offset + init.bytes.byteLength;
    }
    const weights = new Uint8Array(size);
    for (const [init, offset] of offsets) weights.set(init.bytes, offset);
    return { models: graphs.map((graph) => graph.encode(opset, offsets)), weights };
  }

  /** The ModelProto, its large initializers pointing at `offsets` in the external weight buffer. */
  private encode(opset: { domain: string; version: number }[], offsets: Map<InitializerRecord, number>): Uint8Array {
    const initializerProtos = this.initializers.map((init) => {
      const offset = offsets.get(init);
      if (offset === undefined) {
        return onnx.TensorProto.create({ name: init.name, dims: init.dims, dataType: ELEMENT_TYPES[init.type], rawData: init.bytes });
      }
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
        valueInfo: this.shapes,
        initializer: initializerProtos,
      }),
    });
    return onnx.ModelProto.encode(model).finish();
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
