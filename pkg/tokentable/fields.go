package tokentable

import "strings"

// Field is one of the settings, as a FieldError names it. The command maps
// each to what a user sets (a variable, a flag): this package and the
// engine know no variable names. batch.Field is this same type, so that
// the table's refusals and the engine's are mapped by one table.
type Field string

// The fields Inspect names.
const (
	FieldDatabase    Field = "database"
	FieldTableSchema Field = "table schema"
	FieldTable       Field = "table"
	FieldIDColumn    Field = "id column"
	FieldTokenColumn Field = "token column"
	FieldAuditTable  Field = "audit table"
)

// Fields lists every Field Inspect names, for a command that maps them all.
func Fields() []Field {
	return []Field{FieldDatabase, FieldTableSchema, FieldTable, FieldIDColumn, FieldTokenColumn, FieldAuditTable}
}

// FieldError is a failure that settings explain: a value refused, or a
// check that failed with it. Fields says which settings to look at; Err is
// the failure, and its class (ErrConfig, batch.ErrTransient,
// kmsclient.ErrKeyUnusable) is the FieldError's. batch.FieldError is this
// same type.
type FieldError struct {
	Fields []Field
	Err    error
}

func (e *FieldError) Error() string { return e.Named(func(f Field) string { return string(f) }) }
func (e *FieldError) Unwrap() error { return e.Err }

// Named is the error's message with each field called by name(field): the
// command passes the variable a user sets.
func (e *FieldError) Named(name func(Field) string) string {
	names := make([]string, len(e.Fields))
	for i, f := range e.Fields {
		names[i] = name(f)
	}
	return strings.Join(names, ", ") + ": " + e.Err.Error()
}

// fieldError is err explained by fields.
func fieldError(err error, fields ...Field) error { return &FieldError{Fields: fields, Err: err} }
