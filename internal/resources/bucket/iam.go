package bucket

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/versity/versitygw/auth"
)

// Account is one gateway IAM account as the AccountStore keeps it. Secret is
// the S3 secret access key: the store must keep it encrypted at rest.
type Account struct {
	AccessKeyID string `json:"access_key_id"`
	Secret      string `json:"secret"`
	// Role is the versitygw role ("user" for every account pier grants).
	Role string `json:"role"`
	// Bucket and App record which grant made the account, so Destroy and
	// a retried Grant find accounts that never made it into a policy.
	Bucket string `json:"bucket,omitempty"`
	App    string `json:"app,omitempty"`
	// Access is the granted level (read or readwrite).
	Access string `json:"access,omitempty"`
}

// AccountStore persists the gateway's IAM accounts, keyed by access key id.
// pier implements it with its encrypted store. Save receives the complete
// set every time.
type AccountStore interface {
	Load(ctx context.Context) (map[string]Account, error)
	Save(ctx context.Context, accounts map[string]Account) error
}

// storeTimeout bounds a Save made on behalf of the gateway's admin API,
// whose IAMService methods carry no context.
const storeTimeout = 30 * time.Second

// iamService is the gateway's auth.IAMService: accounts live in memory (the
// gateway looks one up on every request) and every change is written
// through the AccountStore before it takes effect. The root account never
// enters the store; the gateway knows it from its own configuration.
type iamService struct {
	store AccountStore
	root  auth.Account

	mu       sync.RWMutex
	loaded   bool
	accounts map[string]Account
}

var _ auth.IAMService = (*iamService)(nil)

func newIAMService(store AccountStore, rootAccess, rootSecret string) *iamService {
	return &iamService{
		store:    store,
		root:     auth.Account{Access: rootAccess, Secret: rootSecret, Role: auth.RoleAdmin},
		accounts: map[string]Account{},
	}
}

// load reads the accounts from the store once; later calls are no-ops.
func (s *iamService) load(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.loaded {
		return nil
	}
	accounts, err := s.store.Load(ctx)
	if err != nil {
		return fmt.Errorf("load gateway accounts: %w", err)
	}
	s.accounts = maps.Clone(accounts)
	if s.accounts == nil {
		s.accounts = map[string]Account{}
	}
	s.loaded = true
	return nil
}

// update applies change to a copy of the accounts, saves the copy and only
// then makes it current, so a failed Save changes nothing.
func (s *iamService) update(ctx context.Context, change func(map[string]Account) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := maps.Clone(s.accounts)
	if err := change(next); err != nil {
		return err
	}
	if err := s.store.Save(ctx, next); err != nil {
		return fmt.Errorf("save gateway accounts: %w", err)
	}
	s.accounts = next
	return nil
}

// add stores a new account.
func (s *iamService) add(ctx context.Context, a Account) error {
	return s.update(ctx, func(m map[string]Account) error {
		if _, ok := m[a.AccessKeyID]; ok || a.AccessKeyID == s.root.Access {
			return auth.ErrUserExists
		}
		m[a.AccessKeyID] = a
		return nil
	})
}

// remove deletes the accounts for which match is true. Deleting none is
// not an error.
func (s *iamService) remove(ctx context.Context, match func(Account) bool) error {
	if len(s.find(match)) == 0 {
		return nil
	}
	return s.update(ctx, func(m map[string]Account) error {
		maps.DeleteFunc(m, func(_ string, a Account) bool { return match(a) })
		return nil
	})
}

// find returns the accounts for which match is true, sorted by access key.
func (s *iamService) find(match func(Account) bool) []Account {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []Account
	for _, a := range s.accounts {
		if match(a) {
			out = append(out, a)
		}
	}
	slices.SortFunc(out, func(a, b Account) int { return cmp.Compare(a.AccessKeyID, b.AccessKeyID) })
	return out
}

// The methods below implement auth.IAMService for the gateway. Apart from
// GetUserAccount and ResolveAccounts they are reached only through the
// gateway's admin API, which listens on a socket in the private Dir.

func (s *iamService) CreateAccount(a auth.Account) error {
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	return s.add(ctx, Account{AccessKeyID: a.Access, Secret: a.Secret, Role: string(a.Role)})
}

func (s *iamService) GetUserAccount(access string) (auth.Account, error) {
	if access == s.root.Access {
		return s.root, nil
	}
	s.mu.RLock()
	a, ok := s.accounts[access]
	s.mu.RUnlock()
	if !ok {
		return auth.Account{}, auth.ErrNoSuchUser
	}
	return auth.Account{Access: a.AccessKeyID, Secret: a.Secret, Role: auth.Role(a.Role)}, nil
}

func (s *iamService) ResolveAccounts(accessKeyIDs []string) ([]string, error) {
	missing := []string{}
	for _, access := range accessKeyIDs {
		if _, err := s.GetUserAccount(access); errors.Is(err, auth.ErrNoSuchUser) {
			missing = append(missing, access)
		}
	}
	return missing, nil
}

func (s *iamService) UpdateUserAccount(access string, props auth.MutableProps) error {
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	return s.update(ctx, func(m map[string]Account) error {
		a, ok := m[access]
		if !ok {
			return auth.ErrNoSuchUser
		}
		if props.Secret != nil {
			a.Secret = *props.Secret
		}
		if props.Role != "" {
			a.Role = string(props.Role)
		}
		m[access] = a
		return nil
	})
}

func (s *iamService) DeleteUserAccount(access string) error {
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	return s.update(ctx, func(m map[string]Account) error {
		if _, ok := m[access]; !ok {
			return auth.ErrNoSuchUser
		}
		delete(m, access)
		return nil
	})
}

func (s *iamService) ListUserAccounts() ([]auth.Account, error) {
	var out []auth.Account
	for _, a := range s.find(func(Account) bool { return true }) {
		out = append(out, auth.Account{Access: a.AccessKeyID, Secret: a.Secret, Role: auth.Role(a.Role)})
	}
	return out, nil
}

// Shutdown is called by the gateway when it stops. The accounts stay in
// memory: the driver's next gateway reuses them.
func (s *iamService) Shutdown() error { return nil }
