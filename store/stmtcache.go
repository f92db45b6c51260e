package store

import (
	"container/list"
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"

	"modernc.org/sqlite"
)

// stmtCacheSize is how many prepared statements a SQLite connection keeps.
// eventfn's own statements are about twenty; the rest is room for handlers'.
const stmtCacheSize = 128

// OpenSQLite opens a SQLite database (a modernc.org/sqlite DSN) whose
// connections keep the statements they run prepared, keyed by their text.
//
// Why: modernc.org/sqlite prepares, runs and finalizes a statement on every
// Exec and Query, and parsing took a third of the one writer's time under
// load (perf, docs/BENCHMARKS.md); every transaction waits for that writer.
// PostgreSQL's pgx keeps such a cache by default.
func OpenSQLite(dsn string) (*sql.DB, error) {
	base, err := sqlite.NewConnector(dsn)
	if err != nil {
		return nil, fmt.Errorf("SQLite DSN: %w", err)
	}
	return sql.OpenDB(cachingConnector{base: base, size: stmtCacheSize}), nil
}

// cachingConnector opens connections of its base with a statement cache.
type cachingConnector struct {
	base driver.Connector
	size int
}

func (c cachingConnector) Connect(ctx context.Context) (driver.Conn, error) {
	dc, err := c.base.Connect(ctx)
	if err != nil {
		return nil, err
	}
	sc, ok := dc.(sqliteConn)
	if !ok {
		_ = dc.Close()
		return nil, fmt.Errorf("SQLite connection is a %T, which lacks methods eventfn forwards", dc)
	}
	return &cachingConn{sqliteConn: sc, size: c.size, byQuery: map[string]*list.Element{}, lru: list.New()}, nil
}

func (c cachingConnector) Driver() driver.Driver { return c.base.Driver() }

// sqliteConn is what modernc.org/sqlite's connection implements of
// database/sql/driver, all of it forwarded by cachingConn: leaving one out
// would change how database/sql uses the connection.
type sqliteConn interface {
	driver.Conn
	driver.ConnBeginTx
	driver.ConnPrepareContext
	driver.ExecerContext
	driver.QueryerContext
	driver.Pinger
	driver.SessionResetter
	driver.Validator
}

// cachingConn runs Exec and Query through prepared statements it keeps, the
// least recently used dropped past size. database/sql calls a driver
// connection from one goroutine at a time (it holds the connection's lock
// around every call, rows' Close included), so the cache needs no lock.
//
// A statement runs through the cache exactly as modernc.org/sqlite's own
// Exec and Query run it (they, too, prepare it and run the prepared
// statement), except that it is reset instead of finalized afterwards. One
// whose rows are still open is in use: the same text then runs uncached.
type cachingConn struct {
	sqliteConn
	size    int
	byQuery map[string]*list.Element // of *cachedStmt
	lru     *list.List               // most recently used first
}

type cachedStmt struct {
	query string
	stmt  driver.Stmt
	inUse bool
}

// take returns the prepared statement for query, marked in use, or nil when
// it is in use already (open rows): the caller then runs query uncached.
func (c *cachingConn) take(ctx context.Context, query string) (*cachedStmt, error) {
	if e, ok := c.byQuery[query]; ok {
		s := e.Value.(*cachedStmt)
		if s.inUse {
			return nil, nil
		}
		c.lru.MoveToFront(e)
		s.inUse = true
		return s, nil
	}
	ds, err := c.sqliteConn.PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	s := &cachedStmt{query: query, stmt: ds, inUse: true}
	c.byQuery[query] = c.lru.PushFront(s)
	c.evict()
	return s, nil
}

// evict drops the least recently used statements not in use past size.
func (c *cachingConn) evict() {
	for e := c.lru.Back(); e != nil && c.lru.Len() > c.size; {
		prev := e.Prev()
		if s := e.Value.(*cachedStmt); !s.inUse {
			c.lru.Remove(e)
			delete(c.byQuery, s.query)
			_ = s.stmt.Close()
		}
		e = prev
	}
}

func (c *cachingConn) release(s *cachedStmt) {
	s.inUse = false
	c.evict()
}

func (c *cachingConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	s, err := c.take(ctx, query)
	if err != nil {
		return nil, err
	}
	if s == nil {
		return c.sqliteConn.ExecContext(ctx, query, args)
	}
	defer c.release(s)
	ex, ok := s.stmt.(driver.StmtExecContext)
	if !ok {
		return nil, fmt.Errorf("SQLite statement is a %T, without ExecContext", s.stmt)
	}
	return ex.ExecContext(ctx, args)
}

func (c *cachingConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	s, err := c.take(ctx, query)
	if err != nil {
		return nil, err
	}
	if s == nil {
		return c.sqliteConn.QueryContext(ctx, query, args)
	}
	q, ok := s.stmt.(driver.StmtQueryContext)
	if !ok {
		c.release(s)
		return nil, fmt.Errorf("SQLite statement is a %T, without QueryContext", s.stmt)
	}
	rows, err := q.QueryContext(ctx, args)
	if err != nil {
		c.release(s)
		return nil, err
	}
	release := func() { c.release(s) }
	if typed, ok := rows.(sqliteRows); ok {
		return &cachedRows{sqliteRows: typed, release: release}, nil
	}
	return &plainCachedRows{Rows: rows, release: release}, nil
}

// Close finalizes the cached statements, which SQLite requires before it
// closes the connection.
func (c *cachingConn) Close() error {
	var errs []error
	for e := c.lru.Front(); e != nil; e = e.Next() {
		errs = append(errs, e.Value.(*cachedStmt).stmt.Close())
	}
	c.lru.Init()
	clear(c.byQuery)
	return errors.Join(append(errs, c.sqliteConn.Close())...)
}

// sqliteRows is what modernc.org/sqlite's rows implement, forwarded so that
// database/sql's ColumnTypes keeps working on a cached statement's rows.
type sqliteRows interface {
	driver.Rows
	driver.RowsColumnTypeDatabaseTypeName
	driver.RowsColumnTypeLength
	driver.RowsColumnTypeNullable
	driver.RowsColumnTypePrecisionScale
	driver.RowsColumnTypeScanType
}

// cachedRows gives the statement back to the cache once its rows close
// (modernc.org/sqlite resets the statement there).
type cachedRows struct {
	sqliteRows
	release func()
}

func (r *cachedRows) Close() error {
	defer r.release()
	return r.sqliteRows.Close()
}

// plainCachedRows is cachedRows for rows without column types.
type plainCachedRows struct {
	driver.Rows
	release func()
}

func (r *plainCachedRows) Close() error {
	defer r.release()
	return r.Rows.Close()
}
