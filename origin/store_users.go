package origin

// Admin users. Every user is an admin (all permissions, all projects); a
// user's token_version is in every token issued to them, and any change
// that must end their sessions — logout, a password change, deletion —
// takes it forward (or removes the user) in the store, so that tokens
// carrying the old version are refused (see userCache for how quickly
// every replica knows). User writes are ordered with every other write by
// the revision row lock (lockedTx), so two replicas can never delete the
// last two users at once.

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// User is an admin user (never their password hash). The API shows it as
// an api.User (userAnswer), without TokenVersion.
type User struct {
	ID           string
	Username     string
	CreatedAt    time.Time
	TokenVersion int64
}

const userColumns = `id, username, created_at, token_version`

func scanUser(sc interface{ Scan(...any) error }) (*User, error) {
	var u User
	var created string
	if err := sc.Scan(&u.ID, &u.Username, &created, &u.TokenVersion); err != nil {
		return nil, err
	}
	u.CreatedAt, _ = parseTS(created)
	return &u, nil
}

// userByID returns the user with id, or ErrNotFound.
func (s *Store) userByID(ctx context.Context, id string) (*User, error) {
	u, err := scanUser(s.db.QueryRowContext(ctx, s.q(`SELECT `+userColumns+` FROM users WHERE id = ?`), id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%w: no such user", ErrNotFound)
	}
	return u, err
}

// userRef resolves a user by id or username in q.
func (s *Store) userRef(ctx context.Context, q querier, ref string) (*User, error) {
	u, err := scanUser(q.QueryRowContext(ctx, s.q(`SELECT `+userColumns+` FROM users WHERE id = ? OR username = ? ORDER BY CASE WHEN id = ? THEN 0 ELSE 1 END LIMIT 1`),
		ref, ref, ref))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%w: no user %q", ErrNotFound, ref)
	}
	return u, err
}

// userLogin returns the user named username and their password hash, or
// ErrNotFound.
func (s *Store) userLogin(ctx context.Context, username string) (*User, string, error) {
	var hash string
	var u User
	var created string
	err := s.db.QueryRowContext(ctx, s.q(`SELECT `+userColumns+`, password_hash FROM users WHERE username = ?`), username).
		Scan(&u.ID, &u.Username, &created, &u.TokenVersion, &hash)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, "", ErrNotFound
	}
	if err != nil {
		return nil, "", err
	}
	u.CreatedAt, _ = parseTS(created)
	return &u, hash, nil
}

// userHash returns a user's password hash.
func (s *Store) userHash(ctx context.Context, id string) (string, error) {
	var hash string
	err := s.db.QueryRowContext(ctx, s.q(`SELECT password_hash FROM users WHERE id = ?`), id).Scan(&hash)
	if errors.Is(err, sql.ErrNoRows) {
		return "", fmt.Errorf("%w: no such user", ErrNotFound)
	}
	return hash, err
}

func (s *Store) listUsers(ctx context.Context) ([]*User, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT `+userColumns+` FROM users ORDER BY username`))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []*User{}
	for rows.Next() {
		u, err := scanUser(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, u)
	}
	return out, rows.Err()
}

// addUser stores a new user; a taken username is ErrConflict.
func (s *Store) addUser(ctx context.Context, username, hash string) (*User, error) {
	tx, unlock, err := s.lockedTx(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	defer tx.Rollback()
	u := &User{ID: newID("usr"), Username: username, CreatedAt: time.Now().UTC()}
	res, err := tx.ExecContext(ctx, s.q(`INSERT INTO users (id, username, password_hash, created_at, token_version) VALUES (?, ?, ?, ?, 0) ON CONFLICT (username) DO NOTHING`),
		u.ID, u.Username, hash, ts(u.CreatedAt))
	if err != nil {
		return nil, fmt.Errorf("creating user: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return nil, err
	} else if n == 0 {
		return nil, fmt.Errorf("%w: a user named %q exists", ErrConflict, username)
	}
	return u, tx.Commit()
}

// deleteUser removes the user ref (id or username), unless they are the
// last: a store without users can be managed by nobody.
func (s *Store) deleteUser(ctx context.Context, ref string) (*User, error) {
	tx, unlock, err := s.lockedTx(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	defer tx.Rollback()
	u, err := s.userRef(ctx, tx, ref)
	if err != nil {
		return nil, err
	}
	var n int
	if err := tx.QueryRowContext(ctx, s.q(`SELECT COUNT(*) FROM users`)).Scan(&n); err != nil {
		return nil, err
	}
	if n <= 1 {
		return nil, &DetailedError{Err: ErrConflict, Message: "the last user cannot be deleted: create another admin first"}
	}
	if _, err := tx.ExecContext(ctx, s.q(`DELETE FROM users WHERE id = ?`), u.ID); err != nil {
		return nil, fmt.Errorf("deleting user: %w", err)
	}
	return u, tx.Commit()
}

// setPassword replaces a user's password hash. With revoke, the user's
// token version goes forward, ending every session they have.
func (s *Store) setPassword(ctx context.Context, id, hash string, revoke bool) error {
	bump := 0
	if revoke {
		bump = 1
	}
	return s.updateUser(ctx, id, `UPDATE users SET password_hash = ?, token_version = token_version + ? WHERE id = ?`, hash, bump, id)
}

// revokeTokens takes a user's token version forward (logout).
func (s *Store) revokeTokens(ctx context.Context, id string) error {
	return s.updateUser(ctx, id, `UPDATE users SET token_version = token_version + 1 WHERE id = ?`, id)
}

// updateUser runs one UPDATE of user id in a locked transaction.
func (s *Store) updateUser(ctx context.Context, id, query string, args ...any) error {
	tx, unlock, err := s.lockedTx(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	defer tx.Rollback()
	res, err := tx.ExecContext(ctx, s.q(query), args...)
	if err != nil {
		return fmt.Errorf("updating user: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return err
	} else if n == 0 {
		return fmt.Errorf("%w: no such user", ErrNotFound)
	}
	return tx.Commit()
}

func (s *Store) userCount(ctx context.Context) (int, error) {
	var n int
	err := s.db.QueryRowContext(ctx, s.q(`SELECT COUNT(*) FROM users`)).Scan(&n)
	return n, err
}

// createUser stores a user unless one of that name exists, and reports
// whether it did: replicas starting at once on one store may all try to
// create the first admin, and exactly one does.
func (s *Store) createUser(ctx context.Context, username, passwordHash string) (created bool, err error) {
	unlock := s.lockWrites()
	defer unlock()
	res, err := s.db.ExecContext(ctx, s.q(`INSERT INTO users (id, username, password_hash, created_at) VALUES (?, ?, ?, ?) ON CONFLICT (username) DO NOTHING`),
		newID("usr"), username, passwordHash, ts(time.Now()))
	if err != nil {
		return false, fmt.Errorf("creating user: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("creating user: %w", err)
	}
	return n == 1, nil
}
