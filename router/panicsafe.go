package router

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"reflect"
	"slices"
)

// database/sql does not survive a panic in the user code it calls: a
// driver.Valuer panicking in a query leaves the transaction's lock held
// (Go 1.26, DB.queryDC releases the connection without defer), and a
// sql.Scanner panicking in Rows.Scan leaves the rows' lock held, so the
// deferred Close deadlocks in the panic itself. The transaction can then
// never commit or roll back, and on SQLite its connection is the one
// writer: every later write would wait for it forever. So on SQLite user
// code that database/sql calls runs under a recover of ours: the call
// fails cleanly inside database/sql, and the panic is raised again once
// the statement has returned, where it unwinds through eventfn's code only.

// errUserCodePanicked is what database/sql hears from a guarded Valuer or
// Scanner that panicked; the caller hears the panic.
var errUserCodePanicked = errors.New("a driver.Valuer or sql.Scanner panicked")

// userPanic holds the value of a panic caught in user code.
type userPanic struct {
	value any
	set   bool
}

// raise panics again with the caught value, if there is one.
func (p *userPanic) raise() {
	if p.set {
		panic(p.value)
	}
}

func (p *userPanic) catch(err *error) {
	if v := recover(); v != nil {
		p.value, p.set = v, true
		*err = errUserCodePanicked
	}
}

var valuerType = reflect.TypeFor[driver.Valuer]()

// guardedValuer calls a driver.Valuer under p's recover.
type guardedValuer struct {
	v driver.Valuer
	p *userPanic
}

func (g guardedValuer) Value() (v driver.Value, err error) {
	// A nil pointer whose type has Value on the value receiver is NULL to
	// database/sql (callValuerValue), not a call on nil.
	if rv := reflect.ValueOf(g.v); rv.Kind() == reflect.Pointer && rv.IsNil() && rv.Type().Elem().Implements(valuerType) {
		return nil, nil
	}
	defer g.p.catch(&err)
	return g.v.Value()
}

// guardArgs returns args with every driver.Valuer (also in a sql.NamedArg)
// called under p's recover; args itself when there is none.
func guardArgs(args []any, p *userPanic) []any {
	return replaced(args, func(a any) (any, bool) {
		switch v := a.(type) {
		case driver.Valuer:
			return guardedValuer{v: v, p: p}, true
		case sql.NamedArg:
			if vr, ok := v.Value.(driver.Valuer); ok {
				v.Value = guardedValuer{v: vr, p: p}
				return v, true
			}
		}
		return nil, false
	})
}

// replaced returns xs with the elements f replaces (reporting true), in a
// copy; xs itself when f replaces none, as for most statements.
func replaced(xs []any, f func(any) (any, bool)) []any {
	var out []any
	for i, x := range xs {
		y, ok := f(x)
		if !ok {
			continue
		}
		if out == nil {
			out = slices.Clone(xs)
		}
		out[i] = y
	}
	if out == nil {
		return xs
	}
	return out
}

// guardedScanner calls a sql.Scanner under p's recover.
type guardedScanner struct {
	s sql.Scanner
	p *userPanic
}

func (g guardedScanner) Scan(src any) (err error) {
	defer g.p.catch(&err)
	return g.s.Scan(src)
}

// guardDests returns dests with every sql.Scanner called under p's recover.
func guardDests(dests []any, p *userPanic) []any {
	return replaced(dests, func(d any) (any, bool) {
		if s, ok := d.(sql.Scanner); ok {
			return guardedScanner{s: s, p: p}, true
		}
		return nil, false
	})
}

// scanGuarded calls scan (a Rows.Scan or Row.Scan of database/sql's) with
// dest's Scanners under a recover, and raises a panic of theirs once scan
// has returned, when database/sql holds no lock.
func scanGuarded(scan func(dest ...any) error, dest []any) error {
	var p userPanic
	err := scan(guardDests(dest, &p)...)
	p.raise()
	return err
}

// valueFirst calls every driver.Valuer of args (also in a sql.NamedArg)
// once before database/sql does, so that one that panics panics here, on
// the caller's goroutine, before database/sql holds a lock. It is for
// PostgreSQL, where pgx, not database/sql, calls Valuers, and prefers its own
// encoders for types that have them: guardArgs's wrapper would hide those.
// A Valuer is called twice then; Value has no business having effects.
func valueFirst(args []any) {
	for _, a := range args {
		if na, ok := a.(sql.NamedArg); ok {
			a = na.Value
		}
		v, ok := a.(driver.Valuer)
		if !ok {
			continue
		}
		if rv := reflect.ValueOf(v); rv.Kind() == reflect.Pointer && rv.IsNil() {
			continue // pgx sends a nil pointer as NULL
		}
		_, _ = v.Value()
	}
}

// ExecContext runs a statement of the transaction with its Valuers guarded.
func (t *sqlTx) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	var p userPanic
	res, err := t.Tx.ExecContext(ctx, query, guardArgs(args, &p)...)
	p.raise()
	return res, err
}

// QueryContext runs a query of the transaction with its Valuers guarded.
// The Scanners of the caller's Scan are guarded by txHandle (guardedRows).
func (t *sqlTx) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	var p userPanic
	rows, err := t.Tx.QueryContext(ctx, query, guardArgs(args, &p)...)
	p.raise()
	return rows, err
}

// QueryRowContext runs a query of the transaction with its Valuers guarded.
func (t *sqlTx) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	var p userPanic
	row := t.Tx.QueryRowContext(ctx, query, guardArgs(args, &p)...)
	p.raise()
	return row
}

// guardedRows is the runtime.Rows a handler reads: Scan calls its Scanners
// under a recover, so one that panics leaves database/sql's lock released
// and panics in the handler's own code. note hears every error it returns
// (txHandle.note), and that its context ended while it was being read.
type guardedRows struct {
	*sql.Rows
	ctx  context.Context
	note func(ctx context.Context, err error) error
	// read says Next reported the end: the statement had finished.
	read bool
}

func (r *guardedRows) Scan(dest ...any) error {
	return r.note(r.ctx, scanGuarded(r.Rows.Scan, dest))
}

func (r *guardedRows) Next() bool {
	if r.Rows.Next() {
		return true
	}
	r.read = true
	_ = r.note(r.ctx, r.Rows.Err())
	return false
}

func (r *guardedRows) Err() error { return r.note(r.ctx, r.Rows.Err()) }

// Close of rows not read to their end whose context has ended says so:
// database/sql may have closed them itself, or pgx drops the connection as
// it reads the rest, and either way Close can answer nil.
func (r *guardedRows) Close() error {
	err := r.Rows.Close()
	if cerr := r.ctx.Err(); !r.read && cerr != nil {
		_ = r.note(r.ctx, fmt.Errorf("rows closed after their context ended, before their end: %w", cerr))
	}
	return r.note(r.ctx, err)
}

// guardedRow is the runtime.Row a handler scans, guarded as guardedRows.
// err, when set, is what the query never ran for.
type guardedRow struct {
	row  *sql.Row
	err  error
	ctx  context.Context
	note func(ctx context.Context, err error) error
}

func (r guardedRow) Scan(dest ...any) error {
	if r.err != nil {
		return r.err
	}
	return r.note(r.ctx, scanGuarded(r.row.Scan, dest))
}

func (r guardedRow) Err() error {
	if r.err != nil {
		return r.err
	}
	return r.note(r.ctx, r.row.Err())
}
