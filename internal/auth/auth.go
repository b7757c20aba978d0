// Package auth authenticates CAPS clients against a token file.
//
// The file (YAML) lists tokens by their SHA-256 hash, never in the clear,
// each with the role, name and (for vendors) store it proves, and optionally
// the topics it may use. `caps token new` makes a token and prints the entry:
//
//	tokens:
//	  - name: 1-206-flowers
//	    role: vendor
//	    store: 1-206-flowers
//	    sha256: 2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae
//	  - name: dana
//	    role: driver
//	    sha256: …
//	    permissions:            # optional: replaces the role's permissions
//	      publish: ["parcel.>"]
//	      subscribe: ["parcel.>"]
//	roles:                      # optional: replaces a role's default permissions
//	  logger:
//	    subscribe: [">"]
//	    deny_subscribe: ["chat.dm.>"]
//	    durable: []             # shared durables it may join (see below)
//
// Permissions may name, besides topics, the shared durable subscriptions a
// token may join (durable: names, with placeholders such as {store};
// "*" for any name; "audit-*" for any name starting "audit-"). A durable
// name a token is not granted is its own: a subscription under it reads a
// copy of its topics no other identity shares, and a name some role is
// granted (the drivers' "drivers", a vendor's "vendor-{store}") is refused
// to the others. Omitting durable keeps the role's grants; durable: []
// grants none.
//
// Tokens are random (32 bytes from crypto/rand), so a plain SHA-256 is a
// sound way to store them: there is nothing to guess that a slow hash would
// protect. Lookups compare against every entry in constant time.
package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"regexp"
	"strings"
	"sync/atomic"
	"time"

	"github.com/goccy/go-yaml"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/protocol"
)

// StoreAttr is the identity attribute a vendor token's store becomes: the
// parcel app's (parcel.StoreAttr), which its permission patterns name as
// {store}.
const StoreAttr = "store"

// TokenPrefix starts every token `caps token new` makes, so a leaked one is
// easy to recognise in logs and secret scanners.
const TokenPrefix = "caps_"

// File is the auth file's structure.
type File struct {
	Tokens []Entry                     `yaml:"tokens"`
	Roles  map[string]*hub.Permissions `yaml:"roles,omitempty"`
}

// Entry is one token in the file.
type Entry struct {
	Name   string `yaml:"name"`
	Role   string `yaml:"role"`
	Store  string `yaml:"store,omitempty"`
	SHA256 string `yaml:"sha256"`
	// Expires, when set, is the time after which the token is refused.
	Expires *time.Time `yaml:"expires,omitempty"`
	// Permissions, when set, replace the role's for this token.
	Permissions *hub.Permissions `yaml:"permissions,omitempty"`
}

// Authenticator checks HELLO tokens against a loaded file. It implements
// hub.Authenticator and may be reloaded while the hub runs.
type Authenticator struct {
	path  string
	table atomic.Pointer[table]
	now   func() time.Time
}

type table struct {
	entries []Entry
	hashes  [][]byte // decoded SHA256 of each entry
	roles   map[string]*hub.Permissions
}

var _ hub.Authenticator = (*Authenticator)(nil)

// Load reads and checks the auth file at path.
func Load(path string) (*Authenticator, error) {
	a := &Authenticator{path: path, now: time.Now}
	if err := a.Reload(); err != nil {
		return nil, err
	}
	return a, nil
}

// Reload re-reads the file. On error the tokens loaded before stay in force.
// Sessions already connected keep the identity they proved.
func (a *Authenticator) Reload() error {
	b, err := os.ReadFile(a.path)
	if err != nil {
		return fmt.Errorf("auth file: %w", err)
	}
	t, err := parse(b)
	if err != nil {
		return fmt.Errorf("auth file %s: %w", a.path, err)
	}
	a.table.Store(t)
	return nil
}

// LooseMode reports the file's permission bits when group or others may
// read or write it: the file lists who may do what, and whoever can edit
// it can grant themselves anything. The hub warns about it at start and at
// every reload.
func (a *Authenticator) LooseMode() (fs.FileMode, bool) {
	fi, err := os.Stat(a.path)
	if err != nil {
		return 0, false
	}
	mode := fi.Mode().Perm()
	return mode, mode&0o066 != 0
}

// Tokens returns how many tokens are loaded.
func (a *Authenticator) Tokens() int { return len(a.table.Load().entries) }

// Parse checks an auth file's contents without loading it into an Authenticator.
func Parse(b []byte) (*File, error) {
	t, err := parse(b)
	if err != nil {
		return nil, err
	}
	return &File{Tokens: t.entries, Roles: t.roles}, nil
}

func parse(b []byte) (*table, error) {
	var f File
	if err := yaml.UnmarshalWithOptions(b, &f, yaml.Strict()); err != nil {
		// One line ("[line:column] what"), without the quoted source the
		// YAML library adds, so it reads well in a log line or on exit.
		msg := strings.Join(strings.Fields(yaml.FormatError(err, false, false)), " ")
		return nil, fmt.Errorf("not a valid auth file: %s", msg)
	}
	t := &table{entries: f.Tokens, roles: f.Roles}
	seen := map[string]int{}
	for i, e := range f.Tokens {
		where := fmt.Sprintf("token %d (%q)", i+1, e.Name)
		if !protocol.ValidName(e.Name) {
			return nil, fmt.Errorf("%s: bad name: 1-32 of A-Z a-z 0-9 _ . -, starting with a letter or digit", where)
		}
		if !protocol.ValidRole(e.Role) {
			return nil, fmt.Errorf("%s: unknown role %q", where, e.Role)
		}
		switch {
		case e.Role == protocol.RoleVendor && !protocol.ValidName(e.Store):
			return nil, fmt.Errorf("%s: a vendor token needs a store (1-32 of A-Z a-z 0-9 _ . -)", where)
		case e.Role != protocol.RoleVendor && e.Store != "":
			return nil, fmt.Errorf("%s: only vendor tokens have a store", where)
		}
		h, err := hex.DecodeString(e.SHA256)
		if err != nil || len(h) != sha256.Size {
			return nil, fmt.Errorf("%s: sha256 must be 64 hex digits (the output of `caps token new`)", where)
		}
		key := strings.ToLower(e.SHA256)
		if j, dup := seen[key]; dup {
			return nil, fmt.Errorf("%s: same token as token %d", where, j+1)
		}
		seen[key] = i
		if err := checkPerms(e.Permissions); err != nil {
			return nil, fmt.Errorf("%s: permissions: %w", where, err)
		}
		t.hashes = append(t.hashes, h)
	}
	for role, p := range f.Roles {
		if !protocol.ValidRole(role) {
			return nil, fmt.Errorf("roles: unknown role %q", role)
		}
		if p == nil {
			return nil, fmt.Errorf("roles: %s: empty permissions (write {} to grant nothing)", role)
		}
		if err := checkPerms(p); err != nil {
			return nil, fmt.Errorf("roles: %s: %w", role, err)
		}
	}
	return t, nil
}

// placeholderRE matches a permission pattern's placeholders ({name},
// {store}, any identity attribute).
var placeholderRE = regexp.MustCompile(`\{[^{}]*\}`)

// checkPerms makes sure every pattern is a valid topic pattern once its
// placeholders are filled in.
func checkPerms(p *hub.Permissions) error {
	if p == nil {
		return nil
	}
	for _, list := range [][]string{p.Publish, p.Subscribe, p.DenyPublish, p.DenySubscribe} {
		for _, pat := range list {
			filled := placeholderRE.ReplaceAllString(pat, "x")
			if !protocol.ValidPattern([]byte(filled)) {
				return fmt.Errorf("invalid topic pattern %q", pat)
			}
		}
	}
	for _, d := range p.Durable {
		filled := strings.TrimSuffix(placeholderRE.ReplaceAllString(d, "x"), "*")
		if d != "*" && !durableRE.MatchString(filled) {
			return fmt.Errorf("invalid durable name %q: 1-64 of A-Z a-z 0-9 _ - (placeholders such as {name} allowed), \"*\" for any, or a prefix and \"*\"", d)
		}
	}
	return nil
}

// durableRE is a durable name (the hub's rule), or the prefix of one.
var durableRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// Errors Authenticate returns; the hub sends their text in the fatal ERR.
var (
	ErrNoToken      = errors.New("this hub requires a token (--token or CAPS_TOKEN)")
	ErrUnknownToken = errors.New("unknown token")
	ErrExpiredToken = errors.New("token expired")
)

// Authenticate implements hub.Authenticator: it finds the token's entry and
// returns the identity it proves. The role and name announced in the HELLO
// are ignored; the token decides both.
func (a *Authenticator) Authenticate(h protocol.Hello) (hub.Identity, error) {
	if h.Token == "" {
		return hub.Identity{}, ErrNoToken
	}
	sum := sha256.Sum256([]byte(h.Token))
	t := a.table.Load()
	// Compare with every entry, without stopping at a match, so the time
	// taken says nothing about which entry (or how much of one) matched.
	found := -1
	for i, want := range t.hashes {
		eq := subtle.ConstantTimeCompare(sum[:], want)
		found = subtle.ConstantTimeSelect(eq, i, found)
	}
	if found < 0 {
		return hub.Identity{}, ErrUnknownToken
	}
	e := t.entries[found]
	if e.Expires != nil && a.now().After(*e.Expires) {
		return hub.Identity{}, ErrExpiredToken
	}
	id := hub.Identity{Role: e.Role, Name: e.Name}
	if e.Store != "" {
		id.Attrs = map[string]string{StoreAttr: e.Store}
	}
	if e.Expires != nil {
		id.Expires = *e.Expires // the hub closes the session then
	}
	switch {
	case e.Permissions != nil:
		id.Perms = e.Permissions
	case t.roles[e.Role] != nil:
		id.Perms = t.roles[e.Role]
	}
	return id, nil
}

// NewToken returns a new random token and its SHA-256 hash (hex), the value
// for the file's sha256 field.
func NewToken() (token, hash string) {
	var b [32]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	token = TokenPrefix + base64.RawURLEncoding.EncodeToString(b[:])
	return token, Hash(token)
}

// Hash returns the SHA-256 of token in hex.
func Hash(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// EntryYAML renders e as the lines to add under `tokens:` in the file.
func EntryYAML(e Entry) string {
	var b strings.Builder
	fmt.Fprintf(&b, "  - name: %q\n", e.Name)
	fmt.Fprintf(&b, "    role: %s\n", e.Role)
	if e.Store != "" {
		fmt.Fprintf(&b, "    store: %q\n", e.Store)
	}
	fmt.Fprintf(&b, "    sha256: %s\n", e.SHA256)
	if e.Expires != nil {
		fmt.Fprintf(&b, "    expires: %s\n", e.Expires.UTC().Format(time.RFC3339))
	}
	if p := e.Permissions; p != nil {
		b.WriteString("    permissions:\n")
		for _, l := range []struct {
			key  string
			list []string
		}{{"publish", p.Publish}, {"subscribe", p.Subscribe}, {"deny_publish", p.DenyPublish}, {"deny_subscribe", p.DenySubscribe}, {"durable", p.Durable}} {
			if l.list != nil || l.key == "publish" || l.key == "subscribe" {
				flow, _ := json.Marshal(append([]string{}, l.list...)) // a JSON list is a YAML flow sequence
				fmt.Fprintf(&b, "      %s: %s\n", l.key, flow)
			}
		}
	}
	return b.String()
}
