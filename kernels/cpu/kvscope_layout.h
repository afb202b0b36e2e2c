/* A struct's layout as this compiler laid it out, exported for the ctypes mirror of it to be checked against
 * (kvscope.kernels.cpu.c_struct compares them field by field when the library loads):
 *
 *   KVSCOPE_LAYOUT(DecodeProgram, KVSCOPE_FIELD(DecodeProgram, tokens), ...)
 *
 * defines `const kvscope_layout kvscope_layout_DecodeProgram`: the struct's sizeof and a table of its fields in
 * declaration order (every field, the table ending with a NULL name), each field's name, offsetof, sizeof and
 * kind, the type code ctypes gives the same scalar ('i' int, 'l' long, 'f' float, ...; 'P' any pointer). */
#ifndef KVSCOPE_LAYOUT_H
#define KVSCOPE_LAYOUT_H

#include <stddef.h>

typedef struct {
    const char *name;
    size_t offset, size;
    char kind;
} kvscope_field;

typedef struct {
    size_t size;
    const kvscope_field *fields;
} kvscope_layout;

#define KVSCOPE_KIND(e)                                                                                          \
    _Generic((e), _Bool: '?', char: 'c', signed char: 'b', unsigned char: 'B', short: 'h', unsigned short: 'H', \
             int: 'i', unsigned int: 'I', long: 'l', unsigned long: 'L', long long: 'q', unsigned long long: 'Q', \
             float: 'f', double: 'd', default: 'P')
#define KVSCOPE_FIELD(type, field)                                                                    \
    {#field, offsetof(type, field), sizeof(((type *)0)->field), KVSCOPE_KIND(((type *)0)->field)}
#define KVSCOPE_LAYOUT(type, ...)                                                                     \
    static const kvscope_field kvscope_fields_##type[] = {__VA_ARGS__, {NULL, 0, 0, 0}};             \
    const kvscope_layout kvscope_layout_##type = {sizeof(type), kvscope_fields_##type}

#endif
