"""Expose a Piper model's per-phoneme durations as an extra graph output, by
editing the ONNX protobuf's wire format directly (no onnx package)."""

FLOAT = 1
VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5
MODEL_GRAPH, GRAPH_NODE, GRAPH_OUTPUT = 7, 1, 12
NODE_OUTPUT, NODE_OP_TYPE = 2, 4
VALUE_NAME, VALUE_TYPE, TYPE_TENSOR, TENSOR_ELEM_TYPE = 1, 2, 1, 1


class WireError(ValueError):
    pass


def read_varint(data, pos):
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise WireError("truncated varint")
        byte = data[pos]; pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def fields(data, start=0, end=None):
    """(field number, wire type, value or (start, end) of the payload, where the field began)."""
    end = len(data) if end is None else end
    pos = start
    while pos < end:
        began = pos
        key, pos = read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == VARINT:
            value, pos = read_varint(data, pos)
        elif wire == FIXED64:
            value, pos = (pos, pos + 8), pos + 8
        elif wire == FIXED32:
            value, pos = (pos, pos + 4), pos + 4
        elif wire == LENGTH:
            size, pos = read_varint(data, pos)
            value, pos = (pos, pos + size), pos + size
        else:
            raise WireError(f"unsupported wire type {wire}")
        if pos > end:
            raise WireError("field runs past its message")
        yield number, wire, value, began


def varint(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def length_field(number, payload):
    return varint(number << 3 | LENGTH) + varint(len(payload)) + payload


def graph_span(model):
    for number, wire, value, began in fields(model):
        if number == MODEL_GRAPH and wire == LENGTH:
            return began, value
    raise WireError("no graph in the model")


def op_outputs(model, op_type):
    """Output names of every node of `op_type` in the model's graph, and the graph's outputs."""
    _, (start, end) = graph_span(model)
    found, outputs = [], []
    wanted = op_type.encode()
    for number, wire, value, _ in fields(model, start, end):
        if wire != LENGTH:
            continue
        if number == GRAPH_NODE:
            op, names = None, []
            for n, w, v, _ in fields(model, *value):
                if n == NODE_OP_TYPE and w == LENGTH:
                    op = bytes(model[v[0]:v[1]])
                elif n == NODE_OUTPUT and w == LENGTH:
                    names.append(bytes(model[v[0]:v[1]]).decode())
            if op == wanted:
                found.append(names)
        elif number == GRAPH_OUTPUT:
            for n, w, v, _ in fields(model, *value):
                if n == VALUE_NAME and w == LENGTH:
                    outputs.append(bytes(model[v[0]:v[1]]).decode())
    return found, outputs


def with_output(model, name):
    """The model bytes with `name` (a float tensor) added to the graph's outputs."""
    began, (start, end) = graph_span(model)
    tensor = varint(TENSOR_ELEM_TYPE << 3 | VARINT) + varint(FLOAT)
    value_info = length_field(VALUE_NAME, name.encode()) + length_field(VALUE_TYPE, length_field(TYPE_TENSOR, tensor))
    graph = bytes(model[start:end]) + length_field(GRAPH_OUTPUT, value_info)
    return bytes(model[:began]) + length_field(MODEL_GRAPH, graph) + bytes(model[end:])
